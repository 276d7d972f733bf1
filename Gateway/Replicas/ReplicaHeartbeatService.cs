using Microsoft.Extensions.Options;
using Rbs.Gateway.Hosting;
using Rbs.Gateway.Registration;

namespace Rbs.Gateway.Replicas;

/// <summary>
/// Keeps this replica's lease in the orchestrator's state store and <see cref="GatewayReplicaSet"/> current: every
/// <see cref="GatewayOptions.ReplicaHeartbeatInterval"/> one rbs.v1.AgentDirectory/HeartbeatReplica call, whose answer is
/// the live replica set. The lease lasts three intervals, so a replica that dies without draining leaves the set
/// within that. While the orchestrator cannot be asked the last set stays (agents keep their tunnels). Stops once the
/// replica drains (<see cref="GatewayDrain"/> ends the lease).
/// </summary>
internal sealed partial class ReplicaHeartbeatService(
    GatewayReplicaSet replicas,
    AgentDirectoryClient directory,
    IOptions<GatewayOptions> options,
    TimeProvider timeProvider,
    ILogger<ReplicaHeartbeatService> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        if (!replicas.Enabled)
        {
            return;
        }

        var interval = options.Value.ReplicaHeartbeatInterval;
        Log.Started(logger, replicas.SelfId, replicas.SelfAddress);
        var failing = false;
        while (!stoppingToken.IsCancellationRequested && !replicas.Draining)
        {
            var set = await directory.HeartbeatReplicaAsync(replicas.SelfId, replicas.SelfAddress, interval * 3, draining: false, stoppingToken);
            if (replicas.Draining)
            {
                // The drain's own call ended the lease; an answer of a heartbeat that raced it must not matter.
                return;
            }

            if (set is not null)
            {
                replicas.Update(set.Select(r => (r.Id, r.AgentAddress)));
                if (failing)
                {
                    Log.Recovered(logger);
                }

                failing = false;
            }
            else
            {
                failing = true;
            }

            try
            {
                await Task.Delay(interval, timeProvider, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 150, Level = LogLevel.Information, Message = "Gateway replica {ReplicaId}: agents dial it at {AgentAddress}; heartbeating to the orchestrator")]
        public static partial void Started(ILogger logger, string replicaId, string agentAddress);

        [LoggerMessage(EventId = 151, Level = LogLevel.Information, Message = "Replica heartbeat answered again: the replica set is current")]
        public static partial void Recovered(ILogger logger);
    }
}
