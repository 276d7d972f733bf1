using System.Collections.Concurrent;
using System.Diagnostics;
using Grpc.Core;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Compute;
using Rbs.Orchestrator.Gateway;
using Rbs.Orchestrator.Hosting;
using Rbs.Orchestrator.State;

namespace Rbs.Orchestrator.Allocation;

/// <summary>The outcome of <see cref="AgentAllocator.GetOrAllocateAsync"/>.</summary>
/// <param name="Agent">The Ready row handed out.</param>
/// <param name="Warm">True when an already-running agent was reused.</param>
/// <param name="Elapsed">Time spent finding or allocating.</param>
internal sealed record AllocationResult(AgentRecord Agent, bool Warm, TimeSpan Elapsed);

/// <summary>
/// Finds the live agent for (user, repo) or allocates exactly one. Inside one process, callers for the
/// same key queue on an async lock; across replicas the store's unique (user, repo) row decides: the
/// caller whose insert wins starts the agent under a lease, the others poll the row until it is Ready,
/// and anyone may clean up a row whose lease lapsed (its allocator died).
/// </summary>
internal sealed partial class AgentAllocator(
    IStateStore store,
    IComputeService compute,
    GatewayClient gateway,
    ReplicaIdentity replica,
    IOptions<OrchestratorOptions> options,
    TimeProvider timeProvider,
    IHostApplicationLifetime lifetime,
    AllocationMetrics metrics,
    ILogger<AgentAllocator> logger)
{
    // LastUsedAt drives reaping at a granularity of hours; skipping sub-second rewrites keeps the warm
    // path to one read under bursts of calls.
    private static readonly TimeSpan s_touchGranularity = TimeSpan.FromSeconds(1);
    private static readonly TimeSpan s_waitPollInterval = TimeSpan.FromMilliseconds(25);

    private readonly KeyedAsyncLock<(string UserId, string RepoHash)> _locks = new();

    // The last failed allocation per key, so callers that queued behind it share its error instead of
    // each retrying a start that just failed (50 callers and a broken agent must not mean 50 spawns).
    private readonly ConcurrentDictionary<(string UserId, string RepoHash), (long At, RpcException Error)> _recentFailures = new();

    public async Task<AllocationResult> GetOrAllocateAsync(string userId, string repoHash, string sourcePath, CancellationToken cancellationToken)
    {
        var started = timeProvider.GetTimestamp();

        // Warm path: one indexed read and a /proc (or cached) probe, no lock and no RPC.
        var row = await store.FindAsync(userId, repoHash, cancellationToken);
        if (row is { State: AgentState.Ready } && await TryReuseAsync(row, cancellationToken))
        {
            return Result(row, warm: true, started);
        }

        var key = (userId, repoHash);
        // Real monotonic ticks, not the TimeProvider: this orders events, it does not measure domain time.
        var queuedAt = Stopwatch.GetTimestamp();
        using (await _locks.AcquireAsync(key, cancellationToken))
        {
            if (_recentFailures.TryGetValue(key, out var failure))
            {
                if (failure.At >= queuedAt)
                {
                    throw failure.Error;
                }

                // Older than this call: it tries afresh (and the table stays small).
                _recentFailures.TryRemove(key, out _);
            }

            var deadline = timeProvider.GetUtcNow() + options.Value.AgentStartTimeout + (options.Value.AllocationLeaseMargin * 2);
            var waiting = false;
            while (true)
            {
                cancellationToken.ThrowIfCancellationRequested();
                row = await store.FindAsync(userId, repoHash, cancellationToken);
                if (row is null)
                {
                    AgentRecord? allocated;
                    try
                    {
                        allocated = await TryAllocateAsync(userId, repoHash, sourcePath, cancellationToken);
                    }
                    catch (RpcException e)
                    {
                        _recentFailures[key] = (Stopwatch.GetTimestamp(), e);
                        throw;
                    }

                    if (allocated is not null)
                    {
                        _recentFailures.TryRemove(key, out _);
                        return Result(allocated, warm: false, started);
                    }

                    // Another replica inserted first: loop and wait for its row.
                    continue;
                }

                var now = timeProvider.GetUtcNow();
                if (row.State == AgentState.Ready)
                {
                    if (await TryReuseAsync(row, cancellationToken))
                    {
                        return Result(row, warm: true, started);
                    }

                    Log.AgentDied(logger, row.AgentId, row.BackendRef, userId, repoHash);
                    metrics.DeadAgentFound(AllocationMetrics.FoundByGetServer);
                    await CleanUpAsync(row, cancellationToken);
                    continue;
                }

                if (row.LeaseExpiresAt is not { } leaseExpires || leaseExpires <= now)
                {
                    Log.LeaseExpired(logger, row.AgentId, row.State, row.LeaseOwner ?? "(none)");
                    await CleanUpAsync(row, cancellationToken);
                    continue;
                }

                if (now >= deadline)
                {
                    throw new RpcException(new Status(
                        StatusCode.Unavailable,
                        $"the agent for repository {repoHash} is still {row.State.ToString().ToLowerInvariant()} by orchestrator {row.LeaseOwner}; retry shortly"));
                }

                if (!waiting)
                {
                    waiting = true;
                    Log.WaitingForLease(logger, row.AgentId, row.State, row.LeaseOwner ?? "(none)", leaseExpires);
                }

                await Task.Delay(s_waitPollInterval, cancellationToken);
            }
        }
    }

    /// <summary>
    /// Claims <paramref name="row"/> (Terminating, our lease), stops its agent and deletes it. A claim that
    /// loses to another writer does nothing: that writer owns the row now.
    /// </summary>
    internal async Task<bool> CleanUpAsync(AgentRecord row, CancellationToken cancellationToken)
    {
        var now = timeProvider.GetUtcNow();
        var claimed = row with
        {
            State = AgentState.Terminating,
            LeaseOwner = replica.Id,
            LeaseExpiresAt = now + options.Value.AgentStartTimeout + options.Value.AllocationLeaseMargin,
        };
        if (!await store.TryUpdateAsync(row, claimed, cancellationToken))
        {
            return false;
        }

        await compute.StopAsync(claimed, cancellationToken);
        await store.DeleteAsync(row.AgentId, cancellationToken);
        return true;
    }

    private async Task<bool> TryReuseAsync(AgentRecord row, CancellationToken cancellationToken)
    {
        // Unknown (backend cannot tell right now) is not acted on: handing out a probably-live agent beats
        // replacing a warm bazel server on a hiccup.
        if (await compute.ProbeAsync(row, cancellationToken) == AgentHealth.Dead)
        {
            return false;
        }

        var now = timeProvider.GetUtcNow();
        if (now - row.LastUsedAt >= s_touchGranularity)
        {
            await store.TouchAsync(row.AgentId, now, cancellationToken);
        }

        Log.Reused(logger, row.AgentId, row.UserId, row.RepoHash);
        return true;
    }

    private async Task<AgentRecord?> TryAllocateAsync(string userId, string repoHash, string sourcePath, CancellationToken cancellationToken)
    {
        EnsureCapacity(await store.ListAsync(cancellationToken), userId, insertedAgentId: null);
        var now = timeProvider.GetUtcNow();
        var record = new AgentRecord(
            AgentId: AgentIds.New(),
            UserId: userId,
            RepoHash: repoHash,
            SourcePath: sourcePath,
            Backend: compute.Backend,
            BackendRef: string.Empty,
            Address: string.Empty,
            State: AgentState.Allocating,
            CreatedAt: now,
            LastUsedAt: now,
            LeaseOwner: replica.Id,
            LeaseExpiresAt: now + options.Value.AgentStartTimeout + options.Value.AllocationLeaseMargin);
        if (!await store.TryInsertAsync(record, cancellationToken))
        {
            return null;
        }

        // Count again with our row in: allocations that raced past the first check (other keys, other replicas) all see
        // each other's committed rows now, and whoever finds the limit exceeded backs out, so the limit holds.
        try
        {
            EnsureCapacity(await store.ListAsync(cancellationToken), userId, record.AgentId);
        }
        catch (RpcException)
        {
            await store.DeleteAsync(record.AgentId, CancellationToken.None);
            throw;
        }

        Log.Allocating(logger, record.AgentId, userId, repoHash, compute.Backend);

        // The start runs on the host's lifetime, not the caller's: a client that gives up (Ctrl-C) must not
        // waste a half-started agent that the next call, or the callers queued behind it, will use.
        var allocation = CompleteAllocationAsync(record, timeProvider.GetTimestamp(), lifetime.ApplicationStopping);
        return await allocation.WaitAsync(cancellationToken);
    }

    /// <summary>
    /// The agent limits (<see cref="OrchestratorOptions.MaxAgents"/>, <see cref="OrchestratorOptions.MaxAgentsPerUser"/>),
    /// counted over every row of the store — allocating, ready and terminating agents all hold memory. Throws
    /// ResourceExhausted (jbazel exit 50) naming the limit, the count and what to do; the status is reserved for this.
    /// </summary>
    private void EnsureCapacity(IReadOnlyList<AgentRecord> rows, string userId, string? insertedAgentId)
    {
        // Before our insert a new agent needs a free slot; after it, our row is one of the counted.
        var extra = insertedAgentId is null ? 1 : 0;
        var value = options.Value;
        var userCount = rows.Count(r => r.UserId == userId);
        if (value.MaxAgentsPerUser > 0 && userCount + extra > value.MaxAgentsPerUser)
        {
            var count = userCount - (1 - extra);
            Log.CapacityReached(logger, $"user {userId}", count, value.MaxAgentsPerUser);
            throw new RpcException(new Status(
                StatusCode.ResourceExhausted,
                $"user '{userId}' already has {count} agents, the most this orchestrator runs per user (--max-agents-per-user {value.MaxAgentsPerUser}, " +
                $"Orchestrator:MaxAgentsPerUser); no new agent is started. Build in a workspace that already has one, wait for the idle reaper to stop " +
                $"yours unused for {value.IdleTtl:c} (--idle-ttl), or ask the operator to raise the limit"));
        }

        var maxAgents = value.GetMaxAgents();
        if (maxAgents > 0 && rows.Count + extra > maxAgents)
        {
            var count = rows.Count - (1 - extra);
            Log.CapacityReached(logger, "all users", count, maxAgents);
            throw new RpcException(new Status(
                StatusCode.ResourceExhausted,
                $"this orchestrator already runs {count} agents, its limit for all users together (--max-agents {maxAgents}, Orchestrator:MaxAgents); " +
                $"no new agent is started. Retry later: the idle reaper stops agents unused for {value.IdleTtl:c} (--idle-ttl); or ask the operator to raise the limit"));
        }
    }

    private async Task<AgentRecord> CompleteAllocationAsync(AgentRecord record, long started, CancellationToken stopping)
    {
        StartedAgent agent;
        try
        {
            agent = await compute.StartAsync(
                // With a gateway configured every agent also dials out, so one agent serves both connect modes.
                new AgentSpec(record.AgentId, record.UserId, record.RepoHash, record.SourcePath, gateway.SpecFor(record.AgentId, record.UserId)),
                stopping);
        }
        catch (Exception e)
        {
            Log.AllocationFailed(logger, record.AgentId, record.RepoHash, e.Message);
            metrics.AgentStartFailed();
            await DiscardAsync(record);
            throw e switch
            {
                ComputeException { Transient: true } => new RpcException(new Status(StatusCode.Unavailable, e.Message)),
                ComputeException => new RpcException(new Status(StatusCode.FailedPrecondition, e.Message)),
                OperationCanceledException => new RpcException(new Status(StatusCode.Unavailable, "the orchestrator is shutting down; retry")),
                _ => e,
            };
        }

        var now = timeProvider.GetUtcNow();
        var ready = record with
        {
            BackendRef = agent.BackendRef,
            Address = agent.Address,
            State = AgentState.Ready,
            LastUsedAt = now,
            LeaseOwner = null,
            LeaseExpiresAt = null,
        };
        if (!await store.TryUpdateAsync(record, ready, CancellationToken.None))
        {
            // Our lease lapsed and someone cleaned the row up: this agent is now nobody's.
            await DiscardAsync(ready);
            throw new RpcException(new Status(
                StatusCode.Unavailable,
                $"starting agent {record.AgentId} outlived its allocation lease; retry"));
        }

        metrics.AgentStarted();
        Log.Allocated(logger, ready.AgentId, ready.BackendRef, ready.Address, timeProvider.GetElapsedTime(started).TotalMilliseconds);
        return ready;
    }

    private async Task DiscardAsync(AgentRecord record)
    {
        // Best effort: the caller reports the original failure; a row left behind here still carries our
        // lease, so whoever finds it after the lease lapses finishes the cleanup.
        try
        {
            await compute.StopAsync(record, CancellationToken.None);
            await store.DeleteAsync(record.AgentId, CancellationToken.None);
        }
        catch (Exception e)
        {
            Log.DiscardFailed(logger, record.AgentId, e);
        }
    }

    private AllocationResult Result(AgentRecord row, bool warm, long started) =>
        new(row, warm, timeProvider.GetElapsedTime(started));

    private static partial class Log
    {
        [LoggerMessage(EventId = 200, Level = LogLevel.Information, Message = "Allocating agent {AgentId} for user {UserId} repo {RepoHash} on backend {Backend}")]
        public static partial void Allocating(ILogger logger, string agentId, string userId, string repoHash, string backend);

        [LoggerMessage(EventId = 201, Level = LogLevel.Information, Message = "Agent {AgentId} ready: {BackendRef} at {Address} after {Millis:0} ms")]
        public static partial void Allocated(ILogger logger, string agentId, string backendRef, string address, double millis);

        [LoggerMessage(EventId = 202, Level = LogLevel.Debug, Message = "Reusing agent {AgentId} for user {UserId} repo {RepoHash}")]
        public static partial void Reused(ILogger logger, string agentId, string userId, string repoHash);

        [LoggerMessage(EventId = 203, Level = LogLevel.Warning, Message = "Agent {AgentId} ({BackendRef}) for user {UserId} repo {RepoHash} is dead; replacing it")]
        public static partial void AgentDied(ILogger logger, string agentId, string backendRef, string userId, string repoHash);

        [LoggerMessage(EventId = 204, Level = LogLevel.Warning, Message = "Agent {AgentId} is {State} under a lapsed lease of {Owner}; cleaning it up")]
        public static partial void LeaseExpired(ILogger logger, string agentId, AgentState state, string owner);

        [LoggerMessage(EventId = 205, Level = LogLevel.Error, Message = "Allocating agent {AgentId} for repo {RepoHash} failed: {Reason}")]
        public static partial void AllocationFailed(ILogger logger, string agentId, string repoHash, string reason);

        [LoggerMessage(EventId = 206, Level = LogLevel.Warning, Message = "Cleaning up failed allocation {AgentId} failed; its lease will let another pass finish it")]
        public static partial void DiscardFailed(ILogger logger, string agentId, Exception exception);

        [LoggerMessage(EventId = 207, Level = LogLevel.Warning, Message = "Agent limit reached for {Scope}: {Count} of {Limit}; refusing a new agent")]
        public static partial void CapacityReached(ILogger logger, string scope, int count, int limit);

        [LoggerMessage(EventId = 208, Level = LogLevel.Debug, Message = "Waiting for agent {AgentId}: {State} under the lease of {Owner} (expires {LeaseExpires:O})")]
        public static partial void WaitingForLease(ILogger logger, string agentId, AgentState state, string owner, DateTimeOffset leaseExpires);
    }
}
