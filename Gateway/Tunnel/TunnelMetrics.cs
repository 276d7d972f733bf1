using System.Diagnostics.Metrics;
using Rbs.Gateway.Replicas;

namespace Rbs.Gateway.Tunnel;

/// <summary>
/// The gateway's counters of rare events (meter <see cref="MeterName"/>; docs/operations.md): tunnel probe failures
/// and forward errors by cause. Observable counters over plain totals, so every series is exported from the start with
/// 0 (a scrape, an alert rule or a dashboard finds them before the first failure).
/// </summary>
internal sealed class TunnelMetrics
{
    public const string MeterName = "Rbs.Gateway";

    /// <summary>The causes of <c>rbs.gateway.forward.errors</c> (label <c>error.type</c>).</summary>
    public static readonly string[] ForwardErrorCauses = [AgentOffline, AgentUnreachable, TunnelLost, GatewayFull];

    /// <summary>The agent has no tunnel to this gateway (not registered, or did not come back within the wait).</summary>
    public const string AgentOffline = "agent_offline";

    /// <summary>The stream could not be sent over the agent's tunnel (no idle tunnel, the tunnel broke before the response).</summary>
    public const string AgentUnreachable = "agent_unreachable";

    /// <summary>The tunnel died mid-stream, after the agent's response had started.</summary>
    public const string TunnelLost = "tunnel_lost";

    /// <summary>The gateway carried its maximum of concurrent streams for the whole admission wait.</summary>
    public const string GatewayFull = "gateway_full";

    private readonly long[] _forwardErrors = new long[ForwardErrorCauses.Length];
    private long _probeFailures;

    public TunnelMetrics(IMeterFactory meterFactory)
    {
        var meter = meterFactory.Create(MeterName);
        meter.CreateObservableCounter("rbs.gateway.tunnel.probe.failures", () => Interlocked.Read(ref _probeFailures), "{failure}",
            "Claimed idle tunnels that failed the liveness probe (no HTTP/2 SETTINGS from the agent in time) and were dropped.");
        meter.CreateObservableCounter("rbs.gateway.forward.errors", ForwardErrors, "{error}",
            "Client streams the gateway could not forward to their agent, by cause (error.type).");
    }

    public void ProbeFailed() => Interlocked.Increment(ref _probeFailures);

    public void ForwardFailed(string cause) => Interlocked.Increment(ref _forwardErrors[Array.IndexOf(ForwardErrorCauses, cause)]);

    private IEnumerable<Measurement<long>> ForwardErrors()
    {
        for (var i = 0; i < ForwardErrorCauses.Length; i++)
        {
            yield return new(Interlocked.Read(ref _forwardErrors[i]), new KeyValuePair<string, object?>("error.type", ForwardErrorCauses[i]));
        }
    }
}

/// <summary>
/// The gateway's gauges, read from the one record of each fact when a reader collects (docs/operations.md): agents
/// online and their tunnels (idle or busy) per replica, streams forwarded and streams waiting. Created once at start
/// (<c>MapGateway</c>).
/// </summary>
internal sealed class TunnelGauges
{
    public TunnelGauges(IMeterFactory meterFactory, AgentTunnelRegistry registry, AgentStreamForwarder forwarder, GatewayReplicaSet replicas,
        Relay.RelayTunnelPool relayTunnels, Relay.ClientRelay relay)
    {
        var meter = meterFactory.Create(TunnelMetrics.MeterName);
        var replica = new KeyValuePair<string, object?>("rbs.gateway.replica", replicas.SelfId);
        meter.CreateObservableUpDownCounter("rbs.gateway.agents", () => new Measurement<int>(registry.Snapshot().Count, replica), "{agent}",
            "Agents connected to this replica (at least one live tunnel).");
        meter.CreateObservableUpDownCounter("rbs.gateway.tunnels", () => Tunnels(registry, replica), "{tunnel}",
            "Live agent tunnels on this replica by state: idle (a spare) or busy (carrying an inner HTTP/2 connection); live = idle + busy.");
        meter.CreateObservableUpDownCounter("rbs.gateway.streams.active", () => new Measurement<int>(forwarder.ActiveStreams, replica), "{stream}",
            "Client streams being forwarded to agents now.");
        meter.CreateObservableUpDownCounter("rbs.gateway.streams.waiting", () => new Measurement<int>(forwarder.WaitingStreams, replica), "{stream}",
            "Client streams waiting: for their agent's tunnel (after a gateway restart) or for a free stream slot.");
        meter.CreateObservableUpDownCounter("rbs.gateway.relay.active", () => new Measurement<int>(relay.ActiveConnections, replica), "{connection}",
            "Client connections relayed to agents now (each carries that client's streams to its agent).");
        meter.CreateObservableUpDownCounter("rbs.gateway.relay.tunnels.parked", () => new Measurement<int>(relayTunnels.Parked, replica), "{tunnel}",
            "Agents' relay tunnels parked on this replica, waiting for a client connection.");
    }

    private static IEnumerable<Measurement<int>> Tunnels(AgentTunnelRegistry registry, KeyValuePair<string, object?> replica)
    {
        int idle = 0, live = 0;
        foreach (var agent in registry.Snapshot())
        {
            idle += agent.IdleTunnels;
            live += agent.LiveTunnels;
        }

        yield return new(idle, replica, new("state", "idle"));
        yield return new(live - idle, replica, new("state", "busy"));
    }
}
