using System.Globalization;

namespace Rbs.JBazel.Diagnostics;

/// <summary>
/// Wall-clock marks of one run's phases, for bench/breakdown.sh: set RBS_PHASE_TRACE to a file and each run appends
/// "&lt;phase&gt; &lt;unix microseconds&gt;" lines to it at exit (the clock strace -ttt prints, so the two line up).
/// Off by default; when off a mark is one static field test and nothing is allocated or written.
/// </summary>
internal static class PhaseTrace
{
    /// <summary>The environment variable naming the file the marks are appended to.</summary>
    public const string Variable = "RBS_PHASE_TRACE";

    private static readonly string? s_path = Environment.GetEnvironmentVariable(Variable) is { Length: > 0 } path ? path : null;
    private static readonly List<(string Phase, long Micros)>? s_marks = s_path is null ? null : new(16);

    public static void Mark(string phase)
    {
        if (s_marks is null)
        {
            return;
        }

        var micros = (DateTime.UtcNow - DateTime.UnixEpoch).Ticks / 10;
        lock (s_marks)
        {
            s_marks.Add((phase, micros));
        }
    }

    /// <summary>Appends the marks to the file (once, at exit; a failure to write is ignored: this is a bench aid).</summary>
    public static void Write()
    {
        if (s_marks is null || s_path is null)
        {
            return;
        }

        lock (s_marks)
        {
            try
            {
                File.AppendAllLines(s_path, s_marks.Select(mark => string.Create(CultureInfo.InvariantCulture, $"{mark.Phase} {mark.Micros}")));
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
            }

            s_marks.Clear();
        }
    }
}
