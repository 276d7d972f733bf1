using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Allocation;
using Rbs.Orchestrator.Compute;
using Rbs.Orchestrator.Hosting;
using Rbs.Orchestrator.State;

namespace Rbs.Orchestrator.Lifecycle;

/// <summary>
/// Every <see cref="OrchestratorOptions.ReapInterval"/>, the replica holding the "reaper" lease stops agents
/// idle longer than <see cref="OrchestratorOptions.IdleTtl"/> (by the store's hand-outs AND the agent's own
/// activity, never with a command running), forgets dead agents, and cleans up rows whose allocation or
/// termination lease lapsed.
/// </summary>
internal sealed partial class IdleReaper(
    IStateStore store,
    IComputeService compute,
    IAgentStatusClient statusClient,
    AgentAllocator allocator,
    ReplicaIdentity replica,
    IOptions<OrchestratorOptions> options,
    TimeProvider timeProvider,
    AllocationMetrics metrics,
    ILogger<IdleReaper> logger) : BackgroundService
{
    public const string LeaseName = "reaper";

    // Whether the last lease attempt succeeded: only changes of hands are logged, not every renewal.
    private bool _holdsLease;

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(options.Value.ReapInterval, timeProvider);
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken))
            {
                try
                {
                    await ReapOnceAsync(stoppingToken);
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    Log.PassFailed(logger, e);
                }
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            // Shutting down.
        }
    }

    /// <summary>One reaping pass. Returns how many agents it stopped or forgot.</summary>
    internal async Task<int> ReapOnceAsync(CancellationToken cancellationToken)
    {
        if (!await HoldLeaseAsync(cancellationToken))
        {
            return 0;
        }

        var ttl = options.Value.IdleTtl;
        var removed = 0;
        foreach (var listed in await store.ListAsync(cancellationToken))
        {
            var row = listed;
            var now = timeProvider.GetUtcNow();
            if (row.State != AgentState.Ready)
            {
                if (row.LeaseExpiresAt is not { } leaseExpires || leaseExpires <= now)
                {
                    if (!await HoldLeaseAsync(cancellationToken))
                    {
                        return removed;
                    }

                    Log.LapsedLease(logger, row.AgentId, row.State, row.LeaseOwner ?? "(none)");
                    removed += await allocator.CleanUpAsync(row, cancellationToken) ? 1 : 0;
                }

                continue;
            }

            var health = await compute.ProbeAsync(row, cancellationToken);
            if (health == AgentHealth.Dead)
            {
                if (!await HoldLeaseAsync(cancellationToken))
                {
                    return removed;
                }

                Log.ForgotDead(logger, row.AgentId, row.BackendRef);
                metrics.DeadAgentFound(AllocationMetrics.FoundByReaper);
                removed += await allocator.CleanUpAsync(row, cancellationToken) ? 1 : 0;
                continue;
            }

            if (health == AgentHealth.Unknown || now - row.LastUsedAt < ttl)
            {
                continue;
            }

            var status = await statusClient.TryGetStatusAsync(row, cancellationToken);
            if (status is null)
            {
                // Alive but not answering: leave it; the agent's own --idle-exit-after is the backstop.
                Log.StatusUnknown(logger, row.AgentId);
                continue;
            }

            if (status.RunningCommands > 0)
            {
                Log.Busy(logger, row.AgentId, status.RunningCommands);
                await store.TouchAsync(row.AgentId, now, cancellationToken);
                continue;
            }

            var lastActivity = status.LastActivityUnixMillis > 0
                ? DateTimeOffset.FromUnixTimeMilliseconds(status.LastActivityUnixMillis)
                : row.LastUsedAt;
            if (now - lastActivity < ttl)
            {
                // Used behind the store's back (e.g. a long-lived client): record it and look again later.
                await store.TouchAsync(row.AgentId, lastActivity, cancellationToken);
                continue;
            }

            if (!await HoldLeaseAsync(cancellationToken))
            {
                return removed;
            }

            // The listing is as old as the pass and the status call took a while: a GetServer on any replica
            // may have handed the agent out since (it moves LastUsedAt). Claim the row as it is now; the
            // claim rewrites LastUsedAt, so this is the last moment such a hand-out is visible.
            var current = await store.GetAsync(row.AgentId, cancellationToken);
            if (current is not { State: AgentState.Ready } || current.LastUsedAt > row.LastUsedAt)
            {
                continue;
            }

            row = current;
            var claimed = row with
            {
                State = AgentState.Terminating,
                LeaseOwner = replica.Id,
                LeaseExpiresAt = now + options.Value.AgentStartTimeout + options.Value.AllocationLeaseMargin,
            };
            if (!await store.TryUpdateAsync(row, claimed, cancellationToken))
            {
                continue;
            }

            // A GetServer may have handed the agent out between the status call and the claim; if its
            // client already started a command, give the agent back instead of killing the build.
            var recheck = await statusClient.TryGetStatusAsync(claimed, cancellationToken);
            if (recheck is { RunningCommands: > 0 })
            {
                await store.TryUpdateAsync(claimed, row with { LastUsedAt = now }, cancellationToken);
                continue;
            }

            Log.Reaping(logger, row.AgentId, row.BackendRef, now - lastActivity);
            await compute.StopAsync(claimed, cancellationToken);
            await store.DeleteAsync(row.AgentId, cancellationToken);
            metrics.AgentReaped();
            removed++;
        }

        return removed;
    }

    /// <summary>
    /// Takes or renews the reaper lease. A pass renews it before every stop, so a long pass (many idle
    /// agents, each stop waiting up to its timeout) never outlives its lease while another replica starts
    /// reaping too; the lease covers three intervals plus one stop (bounded like a termination lease).
    /// The price is failover: a holder that dies is replaced after that long, which is nothing next to
    /// an idle TTL of hours.
    /// </summary>
    private async Task<bool> HoldLeaseAsync(CancellationToken cancellationToken)
    {
        var value = options.Value;
        var duration = (value.ReapInterval * 3) + value.AgentStartTimeout + value.AllocationLeaseMargin;
        var held = await store.TryAcquireLeaseAsync(LeaseName, replica.Id, duration, cancellationToken);
        if (held != _holdsLease)
        {
            if (held)
            {
                Log.LeaseTaken(logger, replica.Id);
            }
            else
            {
                Log.LeaseLost(logger, replica.Id);
            }

            _holdsLease = held;
        }

        return held;
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 500, Level = LogLevel.Information, Message = "Reaping agent {AgentId} ({BackendRef}): idle for {IdleFor}")]
        public static partial void Reaping(ILogger logger, string agentId, string backendRef, TimeSpan idleFor);

        [LoggerMessage(EventId = 501, Level = LogLevel.Warning, Message = "Agent {AgentId} ({BackendRef}) is dead; forgetting it")]
        public static partial void ForgotDead(ILogger logger, string agentId, string backendRef);

        [LoggerMessage(EventId = 502, Level = LogLevel.Debug, Message = "Not reaping agent {AgentId}: {RunningCommands} command(s) running")]
        public static partial void Busy(ILogger logger, string agentId, int runningCommands);

        [LoggerMessage(EventId = 503, Level = LogLevel.Warning, Message = "Not reaping agent {AgentId}: its status is unavailable")]
        public static partial void StatusUnknown(ILogger logger, string agentId);

        [LoggerMessage(EventId = 504, Level = LogLevel.Warning, Message = "Agent {AgentId} is {State} under a lapsed lease of {Owner}; cleaning it up")]
        public static partial void LapsedLease(ILogger logger, string agentId, AgentState state, string owner);

        [LoggerMessage(EventId = 505, Level = LogLevel.Error, Message = "Reaper pass failed")]
        public static partial void PassFailed(ILogger logger, Exception exception);

        [LoggerMessage(EventId = 506, Level = LogLevel.Information, Message = "This replica ({ReplicaId}) now holds the reaper lease and reaps for all replicas")]
        public static partial void LeaseTaken(ILogger logger, string replicaId);

        [LoggerMessage(EventId = 507, Level = LogLevel.Information, Message = "This replica ({ReplicaId}) no longer holds the reaper lease; another replica reaps")]
        public static partial void LeaseLost(ILogger logger, string replicaId);
    }
}
