using Microsoft.Extensions.Options;
using Rbs.Gateway.Hosting;
using Rbs.Gateway.Registration;
using Rbs.Gateway.Tunnel;

namespace Rbs.Gateway.Replicas;

/// <summary>
/// SIGTERM on a replica (the host's ApplicationStopping): leave the replica set (the lease ends at once, so the other
/// replicas and every agent's long-poll learn it within a heartbeat), refuse new tunnels with 503 (agents dial the other
/// replicas), and keep the tunnels that carry streams until those streams have ended — at most
/// <see cref="GatewayOptions.DrainTimeout"/> — then cut them so Kestrel's graceful stop completes. Meanwhile Kestrel
/// itself stops accepting connections and sends GOAWAY on the clients' HTTP/2 connections, so their new streams go
/// to a new connection (through the Service: another replica). A single gateway keeps today's behaviour: cut every
/// tunnel at once (agents redial the restarted gateway).
/// </summary>
internal sealed partial class GatewayDrain(
    GatewayReplicaSet replicas,
    AgentTunnelRegistry registry,
    AgentStreamForwarder forwarder,
    Relay.RelayTunnelPool relayTunnels,
    Relay.ClientRelay relay,
    AgentDirectoryClient directory,
    IOptions<GatewayOptions> options,
    TimeProvider timeProvider,
    ILogger<GatewayDrain> logger)
{
    private static readonly TimeSpan s_pollInterval = TimeSpan.FromMilliseconds(100);

    /// <summary>Completes once the drain has cut the tunnels (tests, logs).</summary>
    public Task Completed { get; private set; } = Task.CompletedTask;

    /// <summary>Called on ApplicationStopping; returns at once.</summary>
    public void Begin()
    {
        if (!replicas.Enabled)
        {
            registry.AbortAll();
            relayTunnels.StopTaking();
            relay.CutAll();
            return;
        }

        if (!replicas.StartDraining())
        {
            return;
        }

        registry.StopTakingTunnels();
        relayTunnels.StopTaking();
        Completed = Task.Run(DrainAsync);
    }

    private async Task DrainAsync()
    {
        var o = options.Value;
        var started = timeProvider.GetTimestamp();
        Log.Draining(logger, replicas.SelfId, forwarder.ActiveStreams, o.DrainTimeout.TotalSeconds);
        using var farewell = new CancellationTokenSource(AgentDirectoryClient.CallTimeout, timeProvider);
        await directory.HeartbeatReplicaAsync(replicas.SelfId, replicas.SelfAddress, o.ReplicaHeartbeatInterval, draining: true, farewell.Token);

        // Give Kestrel's GOAWAY and the agents' move a moment even when nothing is in flight right now: a stream that
        // was on its way still finds the agent's tunnels here. Then wait for the streams in flight, up to the drain's
        // bound (a second short of it, so the tunnels are cut before the host's own timeout).
        var settle = o.ReplicaHeartbeatInterval < o.DrainTimeout ? o.ReplicaHeartbeatInterval : o.DrainTimeout / 2;
        var bound = o.DrainTimeout - TimeSpan.FromSeconds(1);
        using var timer = new PeriodicTimer(s_pollInterval, timeProvider);
        while (true)
        {
            var elapsed = timeProvider.GetElapsedTime(started);
            // A relayed connection counts as one stream: the gateway cannot see the streams it carries.
            var active = forwarder.ActiveStreams + relay.ActiveConnections;
            if ((active == 0 && elapsed >= settle) || elapsed >= bound)
            {
                if (active > 0)
                {
                    Log.DrainTimedOut(logger, active, elapsed.TotalSeconds);
                }

                break;
            }

            await timer.WaitForNextTickAsync();
        }

        Log.Drained(logger, replicas.SelfId, timeProvider.GetElapsedTime(started).TotalSeconds);
        registry.AbortAll();
        relay.CutAll();
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 152, Level = LogLevel.Information, Message = "Replica {ReplicaId} draining: left the replica set, refusing new tunnels; {Streams} stream(s) in flight may run for up to {Seconds:0.#} s")]
        public static partial void Draining(ILogger logger, string replicaId, int streams, double seconds);

        [LoggerMessage(EventId = 153, Level = LogLevel.Warning, Message = "Drain bound reached with {Streams} stream(s) still in flight after {Seconds:0.#} s: cutting them (clients see Unavailable)")]
        public static partial void DrainTimedOut(ILogger logger, int streams, double seconds);

        [LoggerMessage(EventId = 154, Level = LogLevel.Information, Message = "Replica {ReplicaId} drained in {Seconds:0.#} s: cutting its tunnels")]
        public static partial void Drained(ILogger logger, string replicaId, double seconds);
    }
}
