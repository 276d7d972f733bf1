using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Hosting;
using Rbs.Orchestrator.State;
using Rbs.Shared.Hosting;

// The process backend is Linux-only (/proc, signals, setpriv): file modes and owners are always available here.
#pragma warning disable CA1416

namespace Rbs.Orchestrator.Compute.Processes;

/// <summary>
/// Agents as local processes (<c>--local-mode</c>). Each agent runs in its own session (setsid) with
/// stdin from /dev/null and its output appended to <c>&lt;state dir&gt;/agents/&lt;id&gt;.log</c>, so it
/// survives an orchestrator restart and a terminal's Ctrl-C; the orchestrator re-adopts it by pid and id.
/// Files per agent in that directory (the orchestrator's own): <c>&lt;id&gt;.spec</c> (mode 0600: who it belongs to,
/// its pid and address once ready, its direct access key; for re-adoption), <c>&lt;id&gt;.log</c>, and without user
/// isolation <c>&lt;id&gt;.json</c> (the agent's ready file) and with a gateway <c>&lt;id&gt;.join</c> (its join token,
/// mode 0600, so the token never appears on a command line).
/// With <see cref="UserIsolation"/> active the agent runs under its user's uid (setpriv: uid, gid, no supplementary
/// groups, no new privileges) with a minimal environment, HOME and TMPDIR in the user's directory (mode 0700, owned by
/// that uid), and its ready file and one-time credentials in <c>&lt;user dir&gt;/.agents/</c>: the join token and a
/// direct access key (<c>--access-key-file</c>) the agent reads once at start-up; the key guards its loopback listener.
/// Agents always listen on 127.0.0.1 (direct mode from this host); with a <see cref="TunnelSpec"/> they also dial out
/// to the gateway (tunnel mode from anywhere). A loopback listener is unreachable from other hosts and namespaces.
/// </summary>
internal sealed partial class ProcessComputeService(
    IOptions<OrchestratorOptions> orchestratorOptions,
    IOptions<ProcessComputeOptions> options,
    UserIsolation isolation,
    TimeProvider timeProvider,
    ILogger<ProcessComputeService> logger) : IComputeService
{
    public const string BackendName = OrchestratorOptions.ProcessBackend;

    // The shell only redirects and execs: arguments arrive positionally ("$0" "$@"), never interpolated. The log is
    // opened here, by the orchestrator's uid, so an isolated agent writes it through the inherited descriptor and
    // neither it nor any other user can read it.
    private const string LaunchScript = "exec setsid \"$0\" \"$@\" </dev/null >>\"$RBS_AGENT_LOG\" 2>&1";

    private const UnixFileMode OwnerOnly = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    private static readonly TimeSpan s_pollInterval = TimeSpan.FromMilliseconds(20);
    private static readonly JsonSerializerOptions s_json = new(JsonSerializerDefaults.Web);

    private readonly string _agentsDirectory = orchestratorOptions.Value.GetAgentsDirectory();
    private readonly string _workspacesDirectory = orchestratorOptions.Value.GetWorkspacesDirectory();

    // Direct access keys of agents this process has seen (their spec files hold them durably).
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, string> _accessKeys = new(StringComparer.Ordinal);

    public string Backend => BackendName;

    /// <summary>Where agent files live (tests and diagnostics).</summary>
    public string AgentsDirectory => _agentsDirectory;

    public async Task<StartedAgent> StartAsync(AgentSpec spec, CancellationToken cancellationToken)
    {
        var (fileName, prefixArguments) = ResolveAgentCommand();
        // Refuses a user this orchestrator cannot keep apart from the others (before anything is written for them).
        var identity = await isolation.ResolveAsync(spec.UserId, cancellationToken);
        Directory.CreateDirectory(_agentsDirectory);
        if (identity is not null)
        {
            File.SetUnixFileMode(_agentsDirectory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }

        if (IsSyncedWorkspace(spec.SourcePath))
        {
            // A synced copy starts empty; the client's first sync fills it. A client's own directory is never created.
            if (identity is null)
            {
                Directory.CreateDirectory(spec.SourcePath);
            }
            else
            {
                UserIsolation.CreateOwnedDirectory(spec.SourcePath, identity);
            }
        }
        else if (identity is not null)
        {
            // WorkspacePlacement never asks for this; refuse rather than let another uid build (or fail on) a client's directory.
            throw new ComputeException(
                $"with user isolation an agent builds only its own synced copy under --workspaces-path, not '{spec.SourcePath}'; sync the workspace (jbazel --rbs_sync)",
                transient: false);
        }

        var files = FilesOf(spec.AgentId, spec.UserId, identity);
        var logFile = LogFilePath(spec.AgentId);
        File.Delete(files.Ready);
        var accessKey = identity is null ? null : Convert.ToBase64String(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32));
        await WriteSpecFileAsync(new SpecFile(spec.AgentId, spec.UserId, spec.RepoHash, spec.SourcePath)
        {
            Uid = identity?.Uid,
            ReadyFile = files.Ready,
            AccessKey = accessKey,
        }, cancellationToken);
        if (spec.Tunnel is { } tunnel)
        {
            await WriteSecretFileAsync(files.JoinToken, tunnel.JoinToken, identity, cancellationToken);
        }

        if (accessKey is not null)
        {
            await WriteSecretFileAsync(files.AccessKey, accessKey, identity, cancellationToken);
        }

        var startInfo = new ProcessStartInfo("/bin/sh") { UseShellExecute = false };
        startInfo.ArgumentList.Add("-c");
        startInfo.ArgumentList.Add(LaunchScript);
        if (identity is not null)
        {
            // The script's setsid, then setpriv drops to the user's uid and gid (no supplementary groups, and no way back: no_new_privs),
            // then execs the agent: one pid all the way, the agent's.
            startInfo.ArgumentList.Add(UserIsolation.SetprivPath() ?? "setpriv");
            startInfo.ArgumentList.Add($"--reuid={identity.Uid.ToString(CultureInfo.InvariantCulture)}");
            startInfo.ArgumentList.Add($"--regid={identity.Gid.ToString(CultureInfo.InvariantCulture)}");
            startInfo.ArgumentList.Add("--clear-groups");
            startInfo.ArgumentList.Add("--no-new-privs");
            startInfo.ArgumentList.Add("--");
        }

        startInfo.ArgumentList.Add(fileName);
        foreach (var argument in prefixArguments)
        {
            startInfo.ArgumentList.Add(argument);
        }

        foreach (var argument in AgentArguments(spec, files, accessKey is not null))
        {
            startInfo.ArgumentList.Add(argument);
        }

        if (identity is not null)
        {
            IsolatedEnvironment(startInfo.Environment, identity);
        }

        startInfo.Environment["RBS_AGENT_LOG"] = logFile;
        // Whose agent this is, for the agent's audit line of each command (docs/operations.md).
        startInfo.Environment["Agent__UserId"] = spec.UserId;
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
            DeleteAgentFiles(spec.AgentId, spec.UserId);
            throw new ComputeException($"could not start agent '{fileName}': {e.Message}", transient: false, e);
        }

        using (process)
        {
            Log.Spawned(logger, spec.AgentId, process.Id, string.Join(" ", [fileName, .. prefixArguments]), spec.SourcePath, logFile,
                identity is null ? "the orchestrator's uid" : $"uid {identity.Uid}");
            try
            {
                var started = await WaitUntilReadyAsync(spec, process, files.Ready, logFile, identity, cancellationToken);
                // From now on the orchestrator trusts only its own record of the agent: the ready file sits where the
                // user's builds can write.
                await WriteSpecFileAsync(new SpecFile(spec.AgentId, spec.UserId, spec.RepoHash, spec.SourcePath)
                {
                    Uid = identity?.Uid,
                    ReadyFile = files.Ready,
                    AccessKey = accessKey,
                    Pid = int.Parse(started.BackendRef, NumberStyles.None, CultureInfo.InvariantCulture),
                    Address = started.Address,
                }, CancellationToken.None);
                if (accessKey is not null)
                {
                    _accessKeys[spec.AgentId] = accessKey;
                }

                return started;
            }
            catch
            {
                // Never leave a half-started agent behind: it is not in the store and nobody would stop it.
                // Once our child has exited (and been reaped) its pid may belong to someone else: hands off.
                if (!process.HasExited)
                {
                    Kill(process.Id);
                }

                DeleteAgentFiles(spec.AgentId, spec.UserId);
                throw;
            }
        }
    }

    public async ValueTask<string?> GetDirectAccessKeyAsync(AgentRecord record, CancellationToken cancellationToken)
    {
        if (_accessKeys.TryGetValue(record.AgentId, out var cached))
        {
            return cached;
        }

        // Started by another replica on this machine, or before a restart: its spec file has the key.
        var spec = await TryReadSpecFileAsync(record.AgentId, cancellationToken);
        if (spec?.AccessKey is { } key)
        {
            _accessKeys[record.AgentId] = key;
        }

        return spec?.AccessKey;
    }

    public Task<AgentHealth> ProbeAsync(AgentRecord record, CancellationToken cancellationToken)
    {
        var alive = int.TryParse(record.BackendRef, NumberStyles.None, CultureInfo.InvariantCulture, out var pid)
            && UnixProcesses.IsAgentProcess(pid, record.AgentId)
            && RunsAsItsUser(pid, record.UserId);
        return Task.FromResult(alive ? AgentHealth.Alive : AgentHealth.Dead);
    }

    /// <summary>
    /// With isolation, an agent is handed out only while it runs under its user's uid: one started before isolation was
    /// turned on (as the orchestrator's uid) counts as dead, so it is stopped and replaced.
    /// </summary>
    private bool RunsAsItsUser(int pid, string userId) =>
        !isolation.Active || (isolation.RecordedUid(userId) is { } expected && UnixProcesses.ProcessUid(pid) == expected);

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

        DeleteAgentFiles(record.AgentId, record.UserId);
    }

    public async Task<IReadOnlyList<DiscoveredAgent>> DiscoverAsync(CancellationToken cancellationToken)
    {
        var result = new List<DiscoveredAgent>();
        if (!Directory.Exists(_agentsDirectory))
        {
            return result;
        }

        // Agents are known by their spec files (and, from before specs recorded the pid, by ready files beside them).
        var agentIds = Directory.EnumerateFiles(_agentsDirectory, "*.spec")
            .Concat(Directory.EnumerateFiles(_agentsDirectory, "*.json"))
            .Select(Path.GetFileNameWithoutExtension)
            .OfType<string>()
            .Where(id => AgentIdPattern().IsMatch(id))
            .Distinct(StringComparer.Ordinal)
            .ToList();
        foreach (var agentId in agentIds)
        {
            var spec = await TryReadSpecFileAsync(agentId, cancellationToken);
            var (pid, address) = spec is { Pid: > 0, Address: { Length: > 0 } recorded }
                ? (spec.Pid.Value, recorded)
                : await TryReadReadyFileAsync(spec?.ReadyFile ?? ReadyFilePath(agentId), agentId, cancellationToken) is { } ready
                    ? (ready.Pid, ready.Address)
                    : (0, string.Empty);
            if (pid == 0 && spec is not null && IsStillStarting(agentId))
            {
                // Another replica sharing this directory is starting it right now: its ready file is not written yet.
                continue;
            }

            if (pid == 0 || !UnixProcesses.IsAgentProcess(pid, agentId))
            {
                // Leftovers of an agent that is gone; its log stays for post-mortems.
                DeleteAgentFiles(agentId, spec?.UserId);
                continue;
            }

            // A live agent that is not running under the uid its spec names (or its user's, with isolation) is reported
            // without an owner, so adoption stops it instead of handing it out.
            var trusted = spec is not null
                && (spec.Uid is not { } uid || UnixProcesses.ProcessUid(pid) == uid)
                && RunsAsItsUser(pid, spec.UserId);
            result.Add(new DiscoveredAgent(
                agentId,
                trusted ? spec!.UserId : string.Empty,
                trusted ? spec!.RepoHash : string.Empty,
                trusted ? spec!.SourcePath : string.Empty,
                pid.ToString(CultureInfo.InvariantCulture),
                address));
        }

        return result;
    }

    private bool IsStillStarting(string agentId) =>
        DateTime.UtcNow - File.GetLastWriteTimeUtc(SpecFilePath(agentId)) < orchestratorOptions.Value.AgentStartTimeout + TimeSpan.FromSeconds(10);

    private bool IsSyncedWorkspace(string path) =>
        path.StartsWith(_workspacesDirectory + Path.DirectorySeparatorChar, StringComparison.Ordinal);

    internal string ReadyFilePath(string agentId) => Path.Combine(_agentsDirectory, agentId + ".json");

    internal string LogFilePath(string agentId) => Path.Combine(_agentsDirectory, agentId + ".log");

    private string SpecFilePath(string agentId) => Path.Combine(_agentsDirectory, agentId + ".spec");

    internal string JoinTokenFilePath(string agentId) => Path.Combine(_agentsDirectory, agentId + ".join");

    /// <summary>Where the agent's ready file and one-time credentials go: the agents directory, or with isolation the user's own.</summary>
    internal AgentFiles FilesOf(string agentId, string userId, AgentIdentity? identity)
    {
        if (identity is null)
        {
            return new AgentFiles(ReadyFilePath(agentId), JoinTokenFilePath(agentId), Path.Combine(_agentsDirectory, agentId + ".key"));
        }

        var directory = identity.AgentFilesDirectory;
        return new AgentFiles(Path.Combine(directory, agentId + ".json"), Path.Combine(directory, agentId + ".join"), Path.Combine(directory, agentId + ".key"));
    }

    private static async Task WriteSecretFileAsync(string path, string secret, AgentIdentity? identity, CancellationToken cancellationToken)
    {
        // Created 0600 from the start (no window where another user could read it), given to the agent's uid, then renamed
        // into place. The agent reads it once at start-up.
        var temporary = path + ".tmp";
        File.Delete(temporary);
        await using (var stream = new FileStream(temporary, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = OwnerOnly }))
        {
            await stream.WriteAsync(System.Text.Encoding.ASCII.GetBytes(secret), cancellationToken);
        }

        if (identity is not null)
        {
            UnixProcesses.ChangeOwner(temporary, identity.Uid, identity.Gid);
        }

        File.Move(temporary, path, overwrite: true);
    }

    /// <summary>
    /// An isolated agent's environment: only what a build needs (PATH, locale, time zone, dotnet's and the agent's own
    /// settings) plus HOME, USER, LOGNAME and TMPDIR of its user. Nothing else of the orchestrator's environment (cloud
    /// credentials, tokens) reaches another user's builds. bazel needs no passwd entry for the uid: it takes the user
    /// name from USER and its output user root from HOME.
    /// </summary>
    private static void IsolatedEnvironment(IDictionary<string, string?> environment, AgentIdentity identity)
    {
        foreach (var name in environment.Keys.ToList())
        {
            var keep = name is "PATH" or "LANG" or "LANGUAGE" or "TZ"
                || name.StartsWith("LC_", StringComparison.Ordinal)
                || name.StartsWith("DOTNET_", StringComparison.Ordinal)
                || name.StartsWith("Agent__", StringComparison.Ordinal)
                || name.StartsWith("Logging__", StringComparison.Ordinal);
            if (!keep)
            {
                environment.Remove(name);
            }
        }

        environment["HOME"] = identity.Home;
        environment["USER"] = identity.UserName;
        environment["LOGNAME"] = identity.UserName;
        environment["TMPDIR"] = identity.TempDirectory;
    }

    private List<string> AgentArguments(AgentSpec spec, AgentFiles files, bool withAccessKey)
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
            "--ready-file", files.Ready,
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
            arguments.Add(files.JoinToken);
        }

        if (withAccessKey)
        {
            arguments.Add("--access-key-file");
            arguments.Add(files.AccessKey);
        }

        return arguments;
    }

    private async Task<StartedAgent> WaitUntilReadyAsync(
        AgentSpec spec, System.Diagnostics.Process process, string readyFile, string logFile, AgentIdentity? identity, CancellationToken cancellationToken)
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
                if (ready is not null && UnixProcesses.IsAgentProcess(ready.Pid, spec.AgentId)
                    && (identity is null || UnixProcesses.ProcessUid(ready.Pid) == identity.Uid))
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

    /// <summary>
    /// Start-up check for isolated agents: the agent executable (and the dotnet host running a .dll), the build tool and
    /// the workspaces directory must be reachable by other uids. Throws <see cref="InvalidOperationException"/> naming the fix.
    /// </summary>
    internal void CheckIsolationPrerequisites()
    {
        if (!isolation.Active)
        {
            return;
        }

        string fileName;
        string[] prefixArguments;
        try
        {
            (fileName, prefixArguments) = ResolveAgentCommand();
        }
        catch (ComputeException e)
        {
            throw new InvalidOperationException(e.Message, e);
        }

        var executables = new List<string> { fileName };
        executables.AddRange(prefixArguments.Where(a => a.EndsWith(".dll", StringComparison.OrdinalIgnoreCase)));
        if (!fileName.EndsWith(".dll", StringComparison.OrdinalIgnoreCase) && File.Exists(fileName + ".dll"))
        {
            // An apphost (rbs-agent) loads the assembly beside it.
            executables.Add(fileName + ".dll");
        }

        isolation.CheckHost(executables, options.Value.BuildTool);
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

    private void DeleteAgentFiles(string agentId, string? userId)
    {
        _accessKeys.TryRemove(agentId, out _);
        if (Directory.Exists(_agentsDirectory))
        {
            File.Delete(ReadyFilePath(agentId));
            File.Delete(ReadyFilePath(agentId) + ReadyFile.TemporarySuffix);
            File.Delete(SpecFilePath(agentId));
            File.Delete(JoinTokenFilePath(agentId));
            File.Delete(Path.Combine(_agentsDirectory, agentId + ".key"));
        }

        if (!string.IsNullOrEmpty(userId))
        {
            var directory = Path.Combine(isolation.UserDirectoryOf(userId), ".agents");
            if (Directory.Exists(directory))
            {
                foreach (var suffix in (string[])[".json", ".json.tmp", ".join", ".join.tmp", ".key", ".key.tmp"])
                {
                    File.Delete(Path.Combine(directory, agentId + suffix));
                }
            }
        }
    }

    private async Task WriteSpecFileAsync(SpecFile spec, CancellationToken cancellationToken)
    {
        // 0600: it holds the agent's direct access key.
        var path = SpecFilePath(spec.AgentId);
        var temporary = path + ".tmp";
        File.Delete(temporary);
        await using (var stream = new FileStream(temporary, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, UnixCreateMode = OwnerOnly }))
        {
            await JsonSerializer.SerializeAsync(stream, spec, s_json, cancellationToken);
        }

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

    /// <summary>The ready file of agent <paramref name="agentId"/> at <paramref name="path"/>; null while there is none (or another agent's).</summary>
    private static async Task<AgentReadyFile?> TryReadReadyFileAsync(string path, string agentId, CancellationToken cancellationToken)
    {
        var ready = await ReadyFile.TryReadAsync<AgentReadyFile>(path, cancellationToken);
        return ready is { Pid: > 0 } && ready.AgentId == agentId && !string.IsNullOrEmpty(ready.Address) ? ready : null;
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

    /// <summary>The orchestrator's own record of an agent (<c>&lt;id&gt;.spec</c>).</summary>
    private sealed record SpecFile(string AgentId, string UserId, string RepoHash, string SourcePath)
    {
        /// <summary>The uid it runs under; null without isolation.</summary>
        public uint? Uid { get; init; }

        /// <summary>Where it writes its ready file.</summary>
        public string? ReadyFile { get; init; }

        /// <summary>The key its loopback listener requires (isolation only).</summary>
        public string? AccessKey { get; init; }

        /// <summary>Its pid, once ready.</summary>
        public int? Pid { get; init; }

        /// <summary>Its direct address, once ready.</summary>
        public string? Address { get; init; }
    }

    /// <summary>Paths of an agent's ready file and one-time credential files.</summary>
    internal sealed record AgentFiles(string Ready, string JoinToken, string AccessKey);

    private static partial class Log
    {
        [LoggerMessage(EventId = 100, Level = LogLevel.Information, Message = "Spawned agent {AgentId} (pid {Pid}, {Executable}, as {RunsAs}) for workspace {Workspace}; log {LogFile}")]
        public static partial void Spawned(ILogger logger, string agentId, int pid, string executable, string workspace, string logFile, string runsAs);

        [LoggerMessage(EventId = 101, Level = LogLevel.Warning, Message = "Agent {AgentId} (pid {Pid}) did not exit within {Timeout} of SIGTERM; killed it")]
        public static partial void KilledAfterTimeout(ILogger logger, string agentId, int pid, TimeSpan timeout);
    }
}
