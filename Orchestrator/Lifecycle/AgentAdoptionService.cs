using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Allocation;
using Rbs.Orchestrator.Compute;
using Rbs.Orchestrator.Hosting;
using Rbs.Orchestrator.State;

namespace Rbs.Orchestrator.Lifecycle;

/// <summary>
/// Runs before the server accepts calls (<see cref="IHostedLifecycleService.StartingAsync"/>): applies the
/// store's migrations, then reconciles the store with what the backend actually runs, so a restarted
/// orchestrator reuses live agents instead of spawning duplicates.
/// <list type="bullet">
/// <item>Ready row, agent alive: kept (adopted). Agent dead: stopped (idempotent cleanup) and deleted.</item>
/// <item>Allocating/Terminating row whose lease lapsed: stopped and deleted. A live lease is left to its owner.</item>
/// <item>Running agent with no row (e.g. the state file was deleted): adopted when it says whose it is and
/// that (user, repo) has no agent yet, so the warm bazel server survives; otherwise it is a duplicate and
/// is stopped.</item>
/// </list>
/// </summary>
internal sealed partial class AgentAdoptionService(
    IStateStore store,
    IComputeService compute,
    AgentAllocator allocator,
    ReplicaIdentity replica,
    IOptions<OrchestratorOptions> options,
    TimeProvider timeProvider,
    ILogger<AgentAdoptionService> logger) : IHostedLifecycleService
{
    public async Task StartingAsync(CancellationToken cancellationToken)
    {
        await store.InitializeAsync(cancellationToken);
        await ReconcileAsync(cancellationToken);
    }

    internal async Task ReconcileAsync(CancellationToken cancellationToken)
    {
        var rows = await store.ListAsync(cancellationToken);
        var known = new HashSet<string>(StringComparer.Ordinal);
        foreach (var row in rows)
        {
            known.Add(row.AgentId);
            var now = timeProvider.GetUtcNow();
            if (row.State == AgentState.Ready)
            {
                var health = await compute.ProbeAsync(row, cancellationToken);
                if (health == AgentHealth.Dead)
                {
                    Log.ForgotDead(logger, row.AgentId, row.BackendRef, row.RepoHash);
                    await allocator.CleanUpAsync(row, cancellationToken);
                }
                else
                {
                    Log.Adopted(logger, row.AgentId, row.BackendRef, row.Address, row.RepoHash);
                }
            }
            else if (row.LeaseExpiresAt is not { } leaseExpires || leaseExpires <= now)
            {
                Log.LapsedLease(logger, row.AgentId, row.State, row.LeaseOwner ?? "(none)");
                await allocator.CleanUpAsync(row, cancellationToken);
            }
        }

        foreach (var stray in await compute.DiscoverAsync(cancellationToken))
        {
            if (known.Contains(stray.AgentId))
            {
                continue;
            }

            if (await TryAdoptStrayAsync(stray, cancellationToken))
            {
                Log.AdoptedStray(logger, stray.AgentId, stray.BackendRef, stray.RepoHash);
                continue;
            }

            Log.StoppedStray(logger, stray.AgentId, stray.BackendRef);
            await compute.StopAsync(
                new AgentRecord(
                    stray.AgentId, stray.UserId, stray.RepoHash, stray.SourcePath, compute.Backend, stray.BackendRef,
                    stray.Address, AgentState.Terminating, timeProvider.GetUtcNow(), timeProvider.GetUtcNow(), replica.Id, null),
                cancellationToken);
        }
    }

    private async Task<bool> TryAdoptStrayAsync(DiscoveredAgent stray, CancellationToken cancellationToken)
    {
        if (string.IsNullOrEmpty(stray.UserId) || string.IsNullOrEmpty(stray.RepoHash) || string.IsNullOrEmpty(stray.SourcePath))
        {
            return false;
        }

        // Same protocol as an allocation (insert under a lease, then flip to Ready), so a concurrent
        // GetServer either sees our row or wins the insert and we stop the stray.
        var now = timeProvider.GetUtcNow();
        var allocating = new AgentRecord(
            stray.AgentId, stray.UserId, stray.RepoHash, stray.SourcePath, compute.Backend, string.Empty, string.Empty,
            AgentState.Allocating, now, now, replica.Id, now + options.Value.AgentStartTimeout + options.Value.AllocationLeaseMargin);
        if (!await store.TryInsertAsync(allocating, cancellationToken))
        {
            return false;
        }

        var ready = allocating with
        {
            BackendRef = stray.BackendRef,
            Address = stray.Address,
            State = AgentState.Ready,
            LeaseOwner = null,
            LeaseExpiresAt = null,
        };
        if (await store.TryUpdateAsync(allocating, ready, cancellationToken))
        {
            return true;
        }

        await store.DeleteAsync(stray.AgentId, cancellationToken);
        return false;
    }

    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    private static partial class Log
    {
        [LoggerMessage(EventId = 600, Level = LogLevel.Information, Message = "Re-adopted agent {AgentId} ({BackendRef}) at {Address} for repo {RepoHash}")]
        public static partial void Adopted(ILogger logger, string agentId, string backendRef, string address, string repoHash);

        [LoggerMessage(EventId = 601, Level = LogLevel.Information, Message = "Agent {AgentId} ({BackendRef}) for repo {RepoHash} died while the orchestrator was away; forgetting it")]
        public static partial void ForgotDead(ILogger logger, string agentId, string backendRef, string repoHash);

        [LoggerMessage(EventId = 602, Level = LogLevel.Warning, Message = "Agent {AgentId} is {State} under a lapsed lease of {Owner}; cleaning it up")]
        public static partial void LapsedLease(ILogger logger, string agentId, AgentState state, string owner);

        [LoggerMessage(EventId = 603, Level = LogLevel.Information, Message = "Adopted running agent {AgentId} ({BackendRef}) for repo {RepoHash}, which the store did not know")]
        public static partial void AdoptedStray(ILogger logger, string agentId, string backendRef, string repoHash);

        [LoggerMessage(EventId = 604, Level = LogLevel.Warning, Message = "Stopping stray agent {AgentId} ({BackendRef}): unknown to the store and not adoptable")]
        public static partial void StoppedStray(ILogger logger, string agentId, string backendRef);
    }
}
