using System.Diagnostics.Metrics;
using System.Globalization;

namespace Rbs.Agent.Execution;

/// <summary>
/// The agent's command metrics (meter <see cref="MeterName"/>; docs/operations.md): commands by exit code and their
/// duration (one histogram: its count is the number of commands), and the commands running now.
/// </summary>
internal sealed class CommandMetrics
{
    public const string MeterName = "Rbs.Agent";

    private readonly Histogram<double> _duration;

    public CommandMetrics(IMeterFactory meterFactory, CommandTracker tracker)
    {
        var meter = meterFactory.Create(MeterName);
        _duration = meter.CreateHistogram(
            "rbs.agent.command.duration", "s",
            "Build tool commands that ended, from start to exit, by exit code (rbs.exit_code; bazel's own codes, 34/38 for the agent's failures).",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600] });
        meter.CreateObservableUpDownCounter("rbs.agent.commands.running", () => tracker.RunningCount, "{command}", "Build tool commands running now.");
    }

    public void CommandEnded(int exitCode, TimeSpan elapsed) =>
        _duration.Record(elapsed.TotalSeconds, new KeyValuePair<string, object?>("rbs.exit_code", exitCode.ToString(CultureInfo.InvariantCulture)));
}
