using System.Diagnostics.Metrics;

namespace Rbs.Orchestrator.Allocation;

/// <summary>
/// The orchestrator's allocation metrics (meter <see cref="MeterName"/>; docs/operations.md): GetServer latency warm
/// vs cold, agents started (or failed to start), dead agents found and idle agents reaped. Counters are observable
/// over plain totals so every series is exported from the start with 0.
/// </summary>
internal sealed class AllocationMetrics
{
    public const string MeterName = "Rbs.Orchestrator";

    /// <summary>Where a dead agent was found (label <c>rbs.found_by</c>).</summary>
    public const string FoundByGetServer = "get_server";

    public const string FoundByReaper = "reaper";

    private readonly Histogram<double> _getServerDuration;
    private long _started;
    private long _startFailed;
    private long _deadAtGetServer;
    private long _deadAtReaper;
    private long _reaped;

    public AllocationMetrics(IMeterFactory meterFactory)
    {
        var meter = meterFactory.Create(MeterName);
        _getServerDuration = meter.CreateHistogram(
            "rbs.orchestrator.get_server.duration", "s",
            "Successful GetServer calls, from the request to the answer: warm (a running agent reused) or cold (one started).",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60] });
        meter.CreateObservableCounter("rbs.orchestrator.allocations", () => new Measurement<long>[]
        {
            new(Interlocked.Read(ref _started), new KeyValuePair<string, object?>("rbs.outcome", "started")),
            new(Interlocked.Read(ref _startFailed), new KeyValuePair<string, object?>("rbs.outcome", "failed")),
        }, "{agent}", "Agents this orchestrator started for GetServer (outcome started) or failed to start (outcome failed).");
        meter.CreateObservableCounter("rbs.orchestrator.dead_agents", () => new Measurement<long>[]
        {
            new(Interlocked.Read(ref _deadAtGetServer), new KeyValuePair<string, object?>("rbs.found_by", FoundByGetServer)),
            new(Interlocked.Read(ref _deadAtReaper), new KeyValuePair<string, object?>("rbs.found_by", FoundByReaper)),
        }, "{agent}", "Agents found dead (process or pod gone) and forgotten, by who found them.");
        meter.CreateObservableCounter("rbs.orchestrator.reaps", () => Interlocked.Read(ref _reaped), "{agent}",
            "Idle agents stopped by the reaper (unused longer than --idle-ttl, no command running).");
    }

    public void GetServerCompleted(TimeSpan elapsed, bool warm) =>
        _getServerDuration.Record(elapsed.TotalSeconds, new KeyValuePair<string, object?>("rbs.warm", warm ? "true" : "false"));

    public void AgentStarted() => Interlocked.Increment(ref _started);

    public void AgentStartFailed() => Interlocked.Increment(ref _startFailed);

    public void DeadAgentFound(string foundBy) =>
        Interlocked.Increment(ref foundBy == FoundByReaper ? ref _deadAtReaper : ref _deadAtGetServer);

    public void AgentReaped() => Interlocked.Increment(ref _reaped);
}
