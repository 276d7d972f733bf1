using Rbs.Orchestrator.Compute.Processes;

namespace Rbs.Tests.Orchestrator.Infrastructure;

/// <summary>
/// Stand-in agent executables (bash scripts in TestAgent/, copied to the output). They speak the agent's
/// process contract (flags, ready file, SIGTERM) but serve no gRPC, which lifecycle tests do not need.
/// </summary>
internal static class TestAgents
{
    public static string Fake => Script("fake-agent.sh");

    public static string Crashing => Script("crashing-agent.sh");

    public static string Hanging => Script("hanging-agent.sh");

    public static string Stubborn => Script("stubborn-agent.sh");

    private static string Script(string name)
    {
        var path = Path.Combine(AppContext.BaseDirectory, "Orchestrator", "TestAgent", name);
        if (!OperatingSystem.IsWindows())
        {
            // MSBuild's copy may drop the execute bit.
            File.SetUnixFileMode(path, File.GetUnixFileMode(path) | UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute);
        }

        return path;
    }

    /// <summary>Live processes of every agent ever spawned with this agents directory (from its log files).</summary>
    public static IReadOnlyList<int> LiveProcesses(string agentsDirectory)
    {
        var result = new List<int>();
        if (!Directory.Exists(agentsDirectory))
        {
            return result;
        }

        foreach (var agentId in AgentIds(agentsDirectory))
        {
            // `setsid` forks when it starts as a process-group leader: for that moment parent and child both carry the
            // agent's command line. The child is the agent; its parent is about to exit.
            var found = UnixProcesses.FindAgentProcesses(agentId);
            result.AddRange(found.Where(pid => !(ParentOf(pid) is { } parent && found.Contains(parent))));
        }

        return result;
    }

    /// <summary>Kills everything <see cref="LiveProcesses"/> finds; tests call it on the way out, pass or fail.</summary>
    public static void KillAll(string agentsDirectory)
    {
        foreach (var pid in LiveProcesses(agentsDirectory))
        {
            UnixProcesses.Signal(pid, UnixProcesses.SigKill);
        }
    }

    private static int? ParentOf(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return int.Parse(fields[1], System.Globalization.CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException)
        {
            return null;
        }
    }

    private static IEnumerable<string> AgentIds(string agentsDirectory) =>
        Directory.EnumerateFiles(agentsDirectory)
            .Select(Path.GetFileName)
            .Select(name => name![..name!.IndexOf('.', StringComparison.Ordinal)])
            .Where(id => id.StartsWith('a') && id.Length == 21)
            .Distinct(StringComparer.Ordinal);
}
