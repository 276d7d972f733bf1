using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;

namespace Rbs.Orchestrator.Compute.Processes;

/// <summary>The few POSIX process operations .NET does not expose: signals and /proc inspection.</summary>
internal static partial class UnixProcesses
{
    public const int SigKill = 9;
    public const int SigTerm = 15;

    /// <summary>Sends <paramref name="signal"/> to a process (or, with a negative id, a process group).</summary>
    public static bool Signal(int pid, int signal) => Kill(pid, signal) == 0;

    /// <summary>
    /// Whether <paramref name="pid"/> is a live process whose command line mentions
    /// <paramref name="agentId"/>. Agent ids are 21 random characters, so this survives pid reuse:
    /// a recycled pid belongs to some other command line. Zombies have an empty command line and count
    /// as gone.
    /// </summary>
    public static bool IsAgentProcess(int pid, string agentId)
    {
        if (pid <= 0 || string.IsNullOrEmpty(agentId))
        {
            return false;
        }

        try
        {
            var cmdline = File.ReadAllBytes($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/cmdline");
            return cmdline.AsSpan().IndexOf(Encoding.UTF8.GetBytes(agentId)) >= 0;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>All live processes whose command line mentions <paramref name="agentId"/>.</summary>
    public static IReadOnlyList<int> FindAgentProcesses(string agentId)
    {
        var result = new List<int>();
        IEnumerable<string> entries;
        try
        {
            entries = Directory.EnumerateDirectories("/proc");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return result;
        }

        foreach (var entry in entries)
        {
            if (int.TryParse(Path.GetFileName(entry), NumberStyles.None, CultureInfo.InvariantCulture, out var pid)
                && pid != Environment.ProcessId
                && IsAgentProcess(pid, agentId))
            {
                result.Add(pid);
            }
        }

        return result;
    }

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);
}
