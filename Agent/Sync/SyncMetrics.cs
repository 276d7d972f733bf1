using System.Diagnostics.Metrics;

namespace Rbs.Agent.Sync;

/// <summary>
/// Workspace sync and output fetch metrics of the agent (meter <c>Rbs.Agent</c>; docs/operations.md): what jbazel's
/// syncs brought in (bytes of file content received, files written, syncs by outcome) and what its fetches took out
/// (bytes of outputs served). Observable counters over plain totals, so an agent that never synced exports 0.
/// </summary>
internal sealed class SyncMetrics
{
    private long _bytesReceived;
    private long _filesWritten;
    private long _syncsApplied;
    private long _syncsUpToDate;
    private long _fetchBytes;

    public SyncMetrics(IMeterFactory meterFactory)
    {
        var meter = meterFactory.Create(Execution.CommandMetrics.MeterName);
        meter.CreateObservableCounter("rbs.agent.sync.bytes", () => Interlocked.Read(ref _bytesReceived), "By",
            "File content received by workspace syncs (only what the agent did not have: changed files).");
        meter.CreateObservableCounter("rbs.agent.sync.files", () => Interlocked.Read(ref _filesWritten), "{file}",
            "Files written into the workspace by syncs.");
        meter.CreateObservableCounter("rbs.agent.syncs", () => new Measurement<long>[]
        {
            new(Interlocked.Read(ref _syncsApplied), new KeyValuePair<string, object?>("rbs.outcome", "applied")),
            new(Interlocked.Read(ref _syncsUpToDate), new KeyValuePair<string, object?>("rbs.outcome", "up_to_date")),
        }, "{sync}", "Workspace syncs that completed: applied (the tree changed) or up_to_date (nothing to do).");
        meter.CreateObservableCounter("rbs.agent.fetch.bytes", () => Interlocked.Read(ref _fetchBytes), "By",
            "Output bytes served to jbazel (--rbs_fetch_outputs, test logs).");
    }

    public void SyncApplied(ulong bytesReceived, ulong filesWritten)
    {
        Interlocked.Add(ref _bytesReceived, (long)bytesReceived);
        Interlocked.Add(ref _filesWritten, (long)filesWritten);
        Interlocked.Increment(ref _syncsApplied);
    }

    public void SyncUpToDate() => Interlocked.Increment(ref _syncsUpToDate);

    public void OutputsServed(long bytes) => Interlocked.Add(ref _fetchBytes, bytes);
}
