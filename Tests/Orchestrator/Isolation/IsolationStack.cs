using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Orchestrator.Security;
using Rbs.Shared.Hosting;
using Rbs.Shared.Tokens;
using Rbs.Tests.Infrastructure;
using Rbs.Tests.JBazel;

// Linux only: uids, /proc, setpriv.
#pragma warning disable CA1416

namespace Rbs.Tests.Orchestrator.Isolation;

/// <summary>
/// A multi-user RBS on this machine as real processes: rbs-gateway (optional) and rbs-orchestrator --local-mode with API
/// keys for alice, bob and carol, whose real rbs-agents run the given build tool (real bazel by default). Every stack gets
/// its own uid range (--first-uid), so concurrent stacks never share a uid and disposal can end every process it caused
/// (agents, bazel servers, build actions) by uid. The root directory is 0711 like a real deployment's state directory
/// must be for isolated agents.
/// </summary>
internal sealed partial class IsolationStack : IAsyncDisposable
{
    public const string AliceKey = "alice-key-isolation-0123";
    public const string BobKey = "bob-key-isolation-4567";
    public const string CarolKey = "carol-key-isolation-89ab";
    public const int UidCount = 16;

    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    private readonly ITestOutputHelper _output;
    private readonly List<Process> _processes = [];
    private readonly System.Collections.Concurrent.ConcurrentQueue<string> _orchestratorLog = new();

    private IsolationStack(ITestOutputHelper output)
    {
        _output = output;
        Root = Directory.CreateTempSubdirectory("rbs-isolation-test-").FullName;
        File.SetUnixFileMode(Root, (UnixFileMode)0b111_001_001);
        // A range of our own, away from the default (1900000000) and from other stacks running at the same time.
        FirstUid = 1_950_000_000 + (Random.Shared.Next(0, 100_000) * UidCount);
    }

    public string Root { get; }

    public int FirstUid { get; }

    public string StateDirectory => Path.Combine(Root, "state");

    public string WorkspacesDirectory => Path.Combine(StateDirectory, "workspaces");

    public string AgentsDirectory => Path.Combine(StateDirectory, "agents");

    public string OrchestratorAddress { get; private set; } = "";

    public string GatewayPublicAddress { get; private set; } = "";

    public string GatewayAgentAddress { get; private set; } = "";

    public string Home => Path.Combine(Root, "client-home");

    /// <summary>The uid an <c>unprivileged</c> stack runs its orchestrator as: the last of its range, which no user gets first.</summary>
    public int OrchestratorUid => FirstUid + UidCount - 1;

    /// <summary>Starts the stack. <paramref name="unprivileged"/> runs the orchestrator itself as a non-root uid.</summary>
    public static async Task<IsolationStack> StartAsync(
        ITestOutputHelper output, bool withGateway, string? buildTool = null, bool unprivileged = false, params string[] extraArgs)
    {
        var stack = new IsolationStack(output);
        try
        {
            await stack.StartCoreAsync(withGateway, buildTool, unprivileged ? stack.OrchestratorUid : null, extraArgs);
            return stack;
        }
        catch
        {
            await stack.DisposeAsync();
            throw;
        }
    }

    private async Task StartCoreAsync(bool withGateway, string? buildTool, int? orchestratorUid, string[] extraArgs)
    {
        Directory.CreateDirectory(StateDirectory);
        Directory.CreateDirectory(Home);
        var keyFile = Path.Combine(Root, "token.key");
        await File.WriteAllTextAsync(keyFile, RbsTokenKeyRing.GenerateKey() + "\n");
        var apiKeys = Path.Combine(Root, "api-keys");
        await File.WriteAllTextAsync(apiKeys, $"alice:{AliceKey}\nbob:{BobKey}\ncarol:{CarolKey}\n");
        if (orchestratorUid is { } uid)
        {
            // The orchestrator runs as this uid: it owns its state and reads its keys like a non-root service would.
            foreach (var path in (string[])[StateDirectory, keyFile, apiKeys])
            {
                UnixProcesses.ChangeOwner(path, (uint)uid, (uint)uid);
            }
        }

        var args = new List<string>();
        if (withGateway)
        {
            var gatewayReady = Path.Combine(Root, "gateway.json");
            Start(null, "rbs-gateway", "--public-listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0",
                "--orchestrator", "http://127.0.0.1:1", "--token-key-file", keyFile, "--ready-file", gatewayReady);
            var ready = await ReadWhenPresentAsync<GatewayReadyFile>(gatewayReady);
            GatewayPublicAddress = ready.PublicAddress;
            GatewayAgentAddress = ready.AgentAddress;
            args.AddRange(["--gateway-public-address", GatewayPublicAddress, "--gateway-agent-address", GatewayAgentAddress, "--token-key-file", keyFile]);
        }

        var orchestratorReady = Path.Combine(StateDirectory, "orchestrator.json");
        args.InsertRange(0, ["--local-mode", "--port", "0", "--state-path", Path.Combine(StateDirectory, "orchestrator.db"),
            "--agent-path", ReachableBinaries.Agent,
            "--ready-file", orchestratorReady, "--api-keys-file", apiKeys,
            "--first-uid", FirstUid.ToString(CultureInfo.InvariantCulture), "--uid-count", UidCount.ToString(CultureInfo.InvariantCulture)]);
        if (buildTool is not null)
        {
            args.AddRange(["--build-tool", buildTool]);
        }

        args.AddRange(extraArgs);
        Start(orchestratorUid, "rbs-orchestrator", [.. args]);
        OrchestratorAddress = (await ReadWhenPresentAsync<OrchestratorReadyFile>(orchestratorReady)).Address;
    }

    /// <summary>The uid the orchestrator gave <paramref name="user"/> (<c>&lt;workspaces&gt;/.users.json</c>), or null.</summary>
    public uint? UidOf(string user)
    {
        var map = Path.Combine(WorkspacesDirectory, ".users.json");
        if (!File.Exists(map))
        {
            return null;
        }

        using var json = JsonDocument.Parse(File.ReadAllText(map));
        return json.RootElement.GetProperty("uids").TryGetProperty(user, out var uid) ? uid.GetUInt32() : null;
    }

    /// <summary>Runs the real jbazel in <paramref name="workspace"/> against the orchestrator (or gateway) with <paramref name="apiKey"/>.</summary>
    public async Task<(int ExitCode, string Stderr, string Stdout)> JBazelAsync(string workspace, string apiKey, string connect, params string[] args)
    {
        // GetServer goes to the orchestrator itself; in tunnel mode its answer sends the stream to the gateway.
        await using var jbazel = JBazelProcess.Start(_output, workspace, Home, new Dictionary<string, string?>(),
            [$"--rbs_orchestrator={OrchestratorAddress}", $"--rbs_api_key={apiKey}", $"--rbs_connect={connect}", "--rbs_status=always", .. args]);
        jbazel.StandardInput.Close();
        var code = await jbazel.WaitForExitAsync(TimeSpan.FromSeconds(240));
        return (code, jbazel.StderrText, jbazel.StdoutText);
    }

    /// <summary>Waits until the orchestrator has logged a line containing every one of <paramref name="parts"/>.</summary>
    public async Task WaitForOrchestratorLogAsync(TimeSpan timeout, params string[] parts)
    {
        using var cts = new CancellationTokenSource(timeout);
        while (!_orchestratorLog.Any(line => parts.All(p => line.Contains(p, StringComparison.Ordinal))))
        {
            await Task.Delay(50, cts.Token);
        }
    }

    /// <summary>The agent id in jbazel's status line.</summary>
    public static string AgentIdOf(string stderr) =>
        StatusLine().Match(stderr) is { Success: true } match ? match.Groups[1].Value : throw new InvalidOperationException($"no status line in: {stderr}");

    public async ValueTask DisposeAsync()
    {
        await StartedProcesses.StopAllAsync(_processes, line => TestLog.Write(_output, line));

        // Every process under one of this stack's uids is ours (agents, their bazel servers, build actions), and so is
        // every process whose command line names our directory (bazel servers of agents that ran as root).
        KillProcessesOfUids((uint)FirstUid, (uint)(FirstUid + UidCount - 1));
        foreach (var pid in UnixProcesses.FindAgentProcesses(Root))
        {
            UnixProcesses.Signal(pid, UnixProcesses.SigKill);
        }
        foreach (var log in Directory.Exists(AgentsDirectory) ? Directory.EnumerateFiles(AgentsDirectory, "*.log") : [])
        {
            var agentId = Path.GetFileNameWithoutExtension(log);
            foreach (var pid in UnixProcesses.FindAgentProcesses(agentId))
            {
                UnixProcesses.Signal(-pid, UnixProcesses.SigKill);
                UnixProcesses.Signal(pid, UnixProcesses.SigKill);
            }

            foreach (var line in File.ReadLines(log).TakeLast(20))
            {
                TestLog.Write(_output, $"[agent {agentId}] {line}");
            }
        }

        for (var attempt = 0; attempt < 50; attempt++)
        {
            try
            {
                Directory.Delete(Root, recursive: true);
                break;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // A killed bazel server may still be writing its output base for a moment.
                await Task.Delay(100);
            }
        }
    }

    private static void KillProcessesOfUids(uint first, uint last)
    {
        for (var round = 0; round < 20; round++)
        {
            var found = false;
            foreach (var entry in Directory.EnumerateDirectories("/proc"))
            {
                if (int.TryParse(Path.GetFileName(entry), NumberStyles.None, CultureInfo.InvariantCulture, out var pid)
                    && UnixProcesses.ProcessUid(pid) is { } uid && uid >= first && uid <= last)
                {
                    found = true;
                    UnixProcesses.Signal(pid, UnixProcesses.SigKill);
                }
            }

            if (!found)
            {
                return;
            }

            Thread.Sleep(50);
        }
    }

    private void Start(int? uid, string executable, params string[] args)
    {
        // An unprivileged orchestrator must reach its own executable too.
        var path = Path.Combine(uid is null ? AppContext.BaseDirectory : ReachableBinaries.Directory, executable);
        var info = new ProcessStartInfo(uid is null ? path : "setpriv") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        if (uid is { } id)
        {
            foreach (var arg in (string[])[$"--reuid={id}", $"--regid={id}", "--clear-groups", "--", path])
            {
                info.ArgumentList.Add(arg);
            }

            info.Environment["HOME"] = StateDirectory;
        }

        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        foreach (var name in info.Environment.Keys.Where(k => k.StartsWith("Orchestrator__", StringComparison.Ordinal) || k.StartsWith("Gateway__", StringComparison.Ordinal) || k.StartsWith("RBS_", StringComparison.Ordinal)).ToList())
        {
            info.Environment.Remove(name);
        }

        TestLog.Write(_output, $"$ {executable} {string.Join(' ', args)}");
        var process = Process.Start(info) ?? throw new InvalidOperationException($"{executable} did not start");
        _processes.Add(process);
        process.OutputDataReceived += (_, e) => TestLog.Write(_output, $"[{executable}] {e.Data}");
        process.ErrorDataReceived += (_, e) =>
        {
            TestLog.Write(_output, $"[{executable}] {e.Data}");
            if (executable == "rbs-orchestrator" && e.Data is { } line)
            {
                _orchestratorLog.Enqueue(line);
            }
        };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
    }

    private async Task<T> ReadWhenPresentAsync<T>(string path)
        where T : class, IReadyFileContents
    {
        using var cts = new CancellationTokenSource(Timeout);
        while (true)
        {
            if (await ReadyFile.TryReadAsync<T>(path, cts.Token) is { } ready)
            {
                return ready;
            }

            if (_processes.FirstOrDefault(p => p.HasExited) is { } exited)
            {
                throw new InvalidOperationException($"a process exited (code {exited.ExitCode}) before writing {path}");
            }

            await Task.Delay(25, cts.Token);
        }
    }

    [GeneratedRegex(@"rbs: agent (a[0-9a-f]{20}) ")]
    private static partial Regex StatusLine();
}
