using System.Diagnostics.Metrics;
using Rbs.Gateway.Tunnel;

namespace Rbs.Gateway.Relay;

/// <summary>
/// The relay's instruments (meter <see cref="TunnelMetrics.MeterName"/>; docs/operations.md): connections relayed now and
/// in all, tunnels parked, bytes copied by direction and refusals by status. Observable over plain totals, so every
/// series is exported from the start.
/// </summary>
internal sealed class RelayMetrics
{
    public const string ToClient = "to_client";
    public const string ToAgent = "to_agent";

    private static readonly int[] s_statuses = [400, 401, 403, 503];

    private readonly long[] _refusals = new long[s_statuses.Length];
    private long _relayed;
    private long _toClient;
    private long _toAgent;

    public RelayMetrics(IMeterFactory meterFactory)
    {
        var meter = meterFactory.Create(TunnelMetrics.MeterName);
        meter.CreateObservableCounter("rbs.gateway.relay.connections", () => Interlocked.Read(ref _relayed), "{connection}",
            "Client connections spliced onto an agent's relay tunnel.");
        meter.CreateObservableCounter("rbs.gateway.relay.bytes", Bytes, "By",
            "Bytes the relay copied, by direction (to_client: the agents' output; to_agent: the clients' requests and uploads).");
        meter.CreateObservableCounter("rbs.gateway.relay.refusals", Refusals, "{refusal}",
            "Relay requests answered with a refusal by status (the client then forwards its streams one by one): 400 malformed, 401 token rejected, 403 another agent, 503 no tunnel or the gateway's maximum.");
    }

    public void Relayed() => Interlocked.Increment(ref _relayed);

    public void Sent(string direction, long bytes) => Interlocked.Add(ref direction == ToClient ? ref _toClient : ref _toAgent, bytes);

    public void Refused(int status)
    {
        var i = Array.IndexOf(s_statuses, status);
        Interlocked.Increment(ref _refusals[i < 0 ? s_statuses.Length - 1 : i]);
    }

    private IEnumerable<Measurement<long>> Bytes()
    {
        yield return new(Interlocked.Read(ref _toClient), new KeyValuePair<string, object?>("direction", ToClient));
        yield return new(Interlocked.Read(ref _toAgent), new KeyValuePair<string, object?>("direction", ToAgent));
    }

    private IEnumerable<Measurement<long>> Refusals()
    {
        for (var i = 0; i < s_statuses.Length; i++)
        {
            yield return new(Interlocked.Read(ref _refusals[i]), new KeyValuePair<string, object?>("http.response.status_code", s_statuses[i]));
        }
    }
}
