using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Hosting;
using Rbs.Orchestrator.State;

namespace Rbs.Orchestrator.Compute.Processes;

/// <summary>
/// Agents as local processes (<c>--local-mode</c>). Each agent runs in its own session (setsid) with
/// stdin from /dev/null and its output appended to <c>&lt;state dir&gt;/agents/&lt;id&gt;.log</c>, so it
/// survives an orchestrator restart and a terminal's Ctrl-C; the orchestrator re-adopts it by pid and id.
/// Files per agent in that directory: <c>&lt;id&gt;.json</c> (the agent's ready file), <c>&lt;id&gt;.spec</c>
/// (who it belongs to, for re-adoption), <c>&lt;id&gt;.log</c>, and with a gateway <c>&lt;id&gt;.join</c> (its join
/// token, mode 0600, so the token never appears on a command line).
/// Agents always listen on 127.0.0.1 (direct mode from this host); with a <see cref="TunnelSpec"/> they also dial out
/// to the gateway (tunnel mode from anywhere). A loopback listener is unreachable from other hosts and namespaces.
/// </summary>
internal sealed partial class ProcessComputeService(
    IOptions<OrchestratorOptions> orchestratorOptions,
    IOptions<ProcessComputeOptions> options,
    TimeProvider timeProvider,
    ILogger<ProcessComputeService> logger) : IComputeService
{
    public const string BackendName = OrchestratorOptions.ProcessBackend;

    // The shell only redirects and execs: arguments arrive positionally ("$0" "$@"), never interpolated.
    private const string LaunchScript = "exec setsid \"$0\" \"$@\" </dev/null >>\"$RBS_AGENT_LOG\" 2>&1";

    private static readonly TimeSpan s_pollInterval = TimeSpan.FromMilliseconds(20);
    private static readonly JsonSerializerOptions s_json = new(JsonSerializerDefaults.Web);

    private readonly string _agentsDirectory = orchestratorOptions.Value.GetAgentsDirectory();
    private readonly string _workspacesDirectory = orchestratorOptions.Value.GetWorkspacesDirectory();

    public string Backend => BackendName;

    /// <summary>Where agent files live (tests and diagnostics).</summary>
    public string AgentsDirectory => _agentsDirectory;

    public async Task<StartedAgent> StartAsync(AgentSpec spec, CancellationToken cancellationToken)
    {
        var (fileName, prefixArguments) = ResolveAgentCommand();
        Directory.CreateDirectory(_agentsDirectory);
        if (IsSyncedWorkspace(spec.SourcePath))
        {
            // A synced copy starts empty; the client's first sync fills it. A client's own directory is never created.
            Directory.CreateDirectory(spec.SourcePath);
        }

        var readyFile = ReadyFilePath(spec.AgentId);
        var logFile = LogFilePath(spec.AgentId);
        File.Delete(readyFile);
        await WriteSpecFileAsync(spec, cancellationToken);
        if (spec.Tunnel is { } tunnel)
        {
            await WriteJoinTokenFileAsync(spec.AgentId, tunnel.JoinToken, cancellationToken);
        }

        var startInfo = new ProcessStartInfo("/bin/sh") { UseShellExecute = false };
        startInfo.ArgumentList.Add("-c");
        startInfo.ArgumentList.Add(LaunchScript);
        startInfo.ArgumentList.Add(fileName);
        foreach (var argument in prefixArguments)
        {
            startInfo.ArgumentList.Add(argument);
        }

        foreach (var argument in AgentArguments(spec, readyFile))
        {
            startInfo.ArgumentList.Add(argument);
        }

        startInfo.Environment["RBS_AGENT_LOG"] = logFile;
        // The agent is an ASP.NET Core host too: settings meant for the orchestrator's own listener or
        // section must not leak into it (it gets its address from --listen).
        foreach (var name in startInfo.Environment.Keys.Where(IsOrchestratorOnlyVariable).ToList())
        {
            startInfo.Environment.Remove(name);
        }

        System.Diagnostics.Process process;
        try
        {
            process = System.Diagnostics.Process.Start(startInfo)
                ?? throw new ComputeException($"could not start agent {spec.AgentId}", transient: true);
        }
        catch (Exception e) when (e is System.ComponentModel.Win32Exception or IOException)
        {
            DeleteAgentFiles(spec.AgentId);
            throw new ComputeException($"could not start agent '{fileName}': {e.Message}", transient: false, e);
        }

        using (process)
        {
            Log.Spawned(logger, spec.AgentId, process.Id, string.Join(" ", [fileName, .. prefixArguments]), spec.SourcePath, logFile);
            try
            {
                return await WaitUntilReadyAsync(spec, process, readyFile, logFile, cancellationToken);
            }
            catch
            {
                // Never leave a half-started agent behind: it is not in the store and nobody would stop it.
                // Once our child has exited (and been reaped) its pid may belong to someone else: hands off.
                if (!process.HasExited)
                {
                    Kill(process.Id);
                }

                DeleteAgentFiles(spec.AgentId);
                throw;
            }
        }
    }

    public Task<AgentHealth> ProbeAsync(AgentRecord record, CancellationToken cancellationToken)
    {
        var alive = int.TryParse(record.BackendRef, NumberStyles.None, CultureInfo.InvariantCulture, out var pid)
            && UnixProcesses.IsAgentProcess(pid, record.AgentId);
        return Task.FromResult(alive ? AgentHealth.Alive : AgentHealth.Dead);
    }

    public async Task StopAsync(AgentRecord record, CancellationToken cancellationToken)
    {
        var pids = new HashSet<int>();
        if (int.TryParse(record.BackendRef, NumberStyles.None, CultureInfo.InvariantCulture, out var pid)
            && UnixProcesses.IsAgentProcess(pid, record.AgentId))
        {
            pids.Add(pid);
        }
        else
        {
            // An allocation that died half way has no pid in the store: find the process by its id.
            foreach (var found in UnixProcesses.FindAgentProcesses(record.AgentId))
            {
                pids.Add(found);
            }
        }

        foreach (var target in pids)
        {
            UnixProcesses.Signal(target, UnixProcesses.SigTerm);
        }

        var deadline = timeProvider.GetUtcNow() + options.Value.StopTimeout;
        while (pids.Count > 0)
        {
            pids.RemoveWhere(p => !UnixProcesses.IsAgentProcess(p, record.AgentId));
            if (pids.Count == 0 || timeProvider.GetUtcNow() >= deadline)
            {
                break;
            }

            await Task.Delay(s_pollInterval, cancellationToken);
        }

        foreach (var target in pids)
        {
            Log.KilledAfterTimeout(logger, record.AgentId, target, options.Value.StopTimeout);
            Kill(target);
        }

        DeleteAgentFiles(record.AgentId);
    }

    public async Task<IReadOnlyList<DiscoveredAgent>> DiscoverAsync(CancellationToken cancellationToken)
    {
        var result = new List<DiscoveredAgent>();
        if (!Directory.Exists(_agentsDirectory))
        {
            return result;
        }

        foreach (var file in Directory.EnumerateFiles(_agentsDirectory, "*.json"))
        {
            var agentId = Path.GetFileNameWithoutExtension(file);
            if (!AgentIdPattern().IsMatch(agentId))
            {
                continue;
            }

            var ready = await TryReadReadyFileAsync(file, agentId, cancellationToken);
            if (ready is null || !UnixProcesses.IsAgentProcess(ready.Pid, agentId))
            {
                // Leftovers of an agent that is gone; its log stays for post-mortems.
                File.Delete(file);
                File.Delete(SpecFilePath(agentId));
                File.Delete(JoinTokenFilePath(agentId));
                continue;
            }

            var spec = await TryReadSpecFileAsync(agentId, cancellationToken);
            result.Add(new DiscoveredAgent(
                agentId,
                spec?.UserId ?? string.Empty,
                spec?.RepoHash ?? string.Empty,
                spec?.SourcePath ?? string.Empty,
                ready.Pid.ToString(CultureInfo.InvariantCulture),
                ready.Address));
        }

        return result;
    }

    private bool IsSyncedWorkspace(string path) =>
        path.StartsWith(_workspacesDirectory + Path.DirectorySeparatorChar, StringComparison.Ordinal);

    internal string ReadyFilePath(string agentId) => Path.Combine(_agentsDirectory, agentId + ".json");

    internal string LogFilePath(string agentId) => Path.Combine(_agentsDirectory, agentId + ".log");

    private string SpecFilePath(string agentId) => Path.Combine(_agentsDirectory, agentId + ".spec");

    internal string JoinTokenFilePath(string agentId) => Path.Combine(_agentsDirectory, agentId + ".join");

    private async Task WriteJoinTokenFileAsync(string agentId, string joinToken, CancellationToken cancellationToken)
    {
        // Created 0600 from the start (no window where another user could read it), then renamed into place.
        var path = JoinTokenFilePath(agentId);
        var temporary = path + ".tmp";
        File.Delete(temporary);
        var streamOptions = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
        {
            streamOptions.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }

        await using (var stream = new FileStream(temporary, streamOptions))
        {
            await stream.WriteAsync(System.Text.Encoding.ASCII.GetBytes(joinToken), cancellationToken);
        }

        File.Move(temporary, path, overwrite: true);
    }

    private List<string> AgentArguments(AgentSpec spec, string readyFile)
    {
        var idleTtl = orchestratorOptions.Value.IdleTtl;
        // The agent's own idle exit is only a backstop for an orchestrator that is gone for good; the
        // reaper (which knows about hand-outs) normally acts first.
        var idleExitAfter = idleTtl * 2;
        var arguments = new List<string>
        {
            "--agent-id", spec.AgentId,
            "--workspace", spec.SourcePath,
            "--listen", "127.0.0.1:0",
            "--ready-file", readyFile,
            "--idle-exit-after", idleExitAfter.ToString("c", CultureInfo.InvariantCulture),
        };
        if (!string.IsNullOrWhiteSpace(options.Value.BuildTool))
        {
            arguments.Add("--build-tool");
            arguments.Add(options.Value.BuildTool);
        }

        if (spec.Tunnel is { } tunnel)
        {
            arguments.Add("--gateway");
            arguments.Add(tunnel.GatewayAddress);
            arguments.Add("--join-token-file");
            arguments.Add(JoinTokenFilePath(spec.AgentId));
        }

        return arguments;
    }

    private async Task<StartedAgent> WaitUntilReadyAsync(
        AgentSpec spec, System.Diagnostics.Process process, string readyFile, string logFile, CancellationToken cancellationToken)
    {
        var timeout = orchestratorOptions.Value.AgentStartTimeout;
        var deadline = timeProvider.GetUtcNow() + timeout;
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (File.Exists(readyFile))
            {
                var ready = await TryReadReadyFileAsync(readyFile, spec.AgentId, cancellationToken);
                // The pid check can briefly fail while the process execs (its command line is empty
                // mid-exec); a process that really died is caught by HasExited or the deadline below.
                if (ready is not null && UnixProcesses.IsAgentProcess(ready.Pid, spec.AgentId))
                {
                    return new StartedAgent(ready.Pid.ToString(CultureInfo.InvariantCulture), ready.Address);
                }
            }

            if (process.HasExited)
            {
                throw new ComputeException(
                    $"agent {spec.AgentId} exited with code {process.ExitCode} before it was ready; {LogTail(logFile)}",
                    transient: false);
            }

            if (timeProvider.GetUtcNow() >= deadline)
            {
                throw new ComputeException(
                    $"agent {spec.AgentId} did not become ready within {timeout.TotalSeconds:0.#} s (Orchestrator:AgentStartTimeout); {LogTail(logFile)}",
                    transient: true);
            }

            await Task.Delay(s_pollInterval, cancellationToken);
        }
    }

    private (string FileName, string[] PrefixArguments) ResolveAgentCommand()
    {
        var configured = options.Value.AgentPath?.Trim();
        string path;
        if (string.IsNullOrEmpty(configured))
        {
            var besideUs = Path.Combine(AppContext.BaseDirectory, "rbs-agent");
            path = File.Exists(besideUs)
                ? besideUs
                : FindOnPath("rbs-agent") ?? throw new ComputeException(
                    $"agent executable 'rbs-agent' not found next to the orchestrator ({AppContext.BaseDirectory}) or on PATH; " +
                    "set --agent-path (Orchestrator:Process:AgentPath)",
                    transient: false);
        }
        else
        {
            path = configured.Contains('/', StringComparison.Ordinal)
                ? Path.GetFullPath(configured)
                : FindOnPath(configured) ?? Path.GetFullPath(configured);
            if (!File.Exists(path))
            {
                throw new ComputeException(
                    $"agent executable '{configured}' not found; fix --agent-path (Orchestrator:Process:AgentPath)",
                    transient: false);
            }
        }

        if (path.EndsWith(".dll", StringComparison.OrdinalIgnoreCase))
        {
            return (DotnetHostPath(), [path]);
        }

        const UnixFileMode anyExecute = UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute;
        if (!OperatingSystem.IsWindows() && (File.GetUnixFileMode(path) & anyExecute) == 0)
        {
            throw new ComputeException(
                $"agent executable '{path}' is not executable; chmod +x it or fix --agent-path (Orchestrator:Process:AgentPath)",
                transient: false);
        }

        return (path, []);
    }

    private static bool IsOrchestratorOnlyVariable(string name) =>
        name.StartsWith("Orchestrator__", StringComparison.OrdinalIgnoreCase)
        || name.StartsWith("Kestrel__", StringComparison.OrdinalIgnoreCase)
        || name.StartsWith("ASPNETCORE_Kestrel__", StringComparison.OrdinalIgnoreCase)
        || name.Equals("ASPNETCORE_URLS", StringComparison.OrdinalIgnoreCase)
        || name.Equals("ASPNETCORE_HTTP_PORTS", StringComparison.OrdinalIgnoreCase)
        || name.Equals("ASPNETCORE_HTTPS_PORTS", StringComparison.OrdinalIgnoreCase)
        || name.Equals("DOTNET_URLS", StringComparison.OrdinalIgnoreCase);

    private static string DotnetHostPath()
    {
        var current = Environment.ProcessPath;
        if (current is not null && Path.GetFileNameWithoutExtension(current) == "dotnet")
        {
            return current;
        }

        var fromSdk = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        return !string.IsNullOrEmpty(fromSdk) && File.Exists(fromSdk) ? fromSdk : FindOnPath("dotnet") ?? "dotnet";
    }

    private static string? FindOnPath(string name)
    {
        foreach (var directory in (Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = Path.Combine(directory, name);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        return null;
    }

    private void Kill(int pid)
    {
        // The agent leads its own session and process group (setsid), so the group kill also takes any
        // child it left behind; the plain kill covers the moment before setsid ran.
        UnixProcesses.Signal(-pid, UnixProcesses.SigKill);
        UnixProcesses.Signal(pid, UnixProcesses.SigKill);
    }

    private void DeleteAgentFiles(string agentId)
    {
        if (!Directory.Exists(_agentsDirectory))
        {
            return;
        }

        File.Delete(ReadyFilePath(agentId));
        File.Delete(ReadyFilePath(agentId) + ".tmp");
        File.Delete(SpecFilePath(agentId));
        File.Delete(JoinTokenFilePath(agentId));
    }

    private async Task WriteSpecFileAsync(AgentSpec spec, CancellationToken cancellationToken)
    {
        var path = SpecFilePath(spec.AgentId);
        var temporary = path + ".tmp";
        await File.WriteAllTextAsync(
            temporary,
            JsonSerializer.Serialize(new SpecFile(spec.AgentId, spec.UserId, spec.RepoHash, spec.SourcePath), s_json),
            cancellationToken);
        File.Move(temporary, path, overwrite: true);
    }

    private async Task<SpecFile?> TryReadSpecFileAsync(string agentId, CancellationToken cancellationToken)
    {
        try
        {
            var spec = JsonSerializer.Deserialize<SpecFile>(await File.ReadAllTextAsync(SpecFilePath(agentId), cancellationToken), s_json);
            return spec is not null && spec.AgentId == agentId ? spec : null;
        }
        catch (Exception e) when (e is IOException or JsonException)
        {
            return null;
        }
    }

    private static async Task<ReadyFile?> TryReadReadyFileAsync(string path, string agentId, CancellationToken cancellationToken)
    {
        try
        {
            var ready = JsonSerializer.Deserialize<ReadyFile>(await File.ReadAllTextAsync(path, cancellationToken), s_json);
            return ready is { Pid: > 0 } && ready.AgentId == agentId && !string.IsNullOrEmpty(ready.Address) ? ready : null;
        }
        catch (Exception e) when (e is IOException or JsonException)
        {
            return null;
        }
    }

    private static string LogTail(string logFile)
    {
        const int maxLines = 10;
        const int maxChars = 2000;
        try
        {
            var lines = File.ReadLines(logFile).TakeLast(maxLines).ToList();
            if (lines.Count == 0)
            {
                return $"it printed nothing (log: {logFile})";
            }

            var text = string.Join(" | ", lines);
            if (text.Length > maxChars)
            {
                text = text[^maxChars..];
            }

            return $"last output: {text} (log: {logFile})";
        }
        catch (IOException)
        {
            return $"no log at {logFile}";
        }
    }

    [GeneratedRegex("^a[0-9a-f]{20}$")]
    private static partial Regex AgentIdPattern();

    private sealed record ReadyFile(string AgentId, int Pid, string Address);

    private sealed record SpecFile(string AgentId, string UserId, string RepoHash, string SourcePath);

    private static partial class Log
    {
        [LoggerMessage(EventId = 100, Level = LogLevel.Information, Message = "Spawned agent {AgentId} (pid {Pid}, {Executable}) for workspace {Workspace}; log {LogFile}")]
        public static partial void Spawned(ILogger logger, string agentId, int pid, string executable, string workspace, string logFile);

        [LoggerMessage(EventId = 101, Level = LogLevel.Warning, Message = "Agent {AgentId} (pid {Pid}) did not exit within {Timeout} of SIGTERM; killed it")]
        public static partial void KilledAfterTimeout(ILogger logger, string agentId, int pid, TimeSpan timeout);
    }
}
