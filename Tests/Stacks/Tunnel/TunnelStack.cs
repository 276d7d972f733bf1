using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Grpc.Core;
using Grpc.Net.Client;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Orchestrator.Gateway;
using Rbs.Orchestrator.Security;
using Rbs.Shared.Hosting;
using Rbs.Shared.Tokens;
using Rbs.Tests.Agent;
using Rbs.Tests.Infrastructure;
using Rbs.V1;

namespace Rbs.Tests.Stacks.Tunnel;

/// <summary>
/// The whole tunnel stack as real processes on 127.0.0.1: rbs-gateway (ephemeral ports, generated key file) and
/// rbs-orchestrator --local-mode with the gateway flags and API keys (alice, bob), whose real rbs-agents run
/// fake-bazel.sh. Every process (agents included: they run in their own sessions) is killed on dispose.
/// </summary>
public sealed class TunnelStack : IAsyncDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    public const string AliceKey = "alice-key-0123456789";
    public const string BobKey = "bob-key-9876543210";

    private readonly List<Process> _processes = [];
    private readonly IReadOnlyDictionary<string, string> _environment;
    private Action<string> _log;
    private Process? _gateway;

    private TunnelStack(string root, Action<string> log, IReadOnlyDictionary<string, string>? environment)
    {
        Root = root;
        _log = log;
        _environment = environment ?? new Dictionary<string, string>();
    }

    public string Root { get; }

    /// <summary>The base64 token key shared by gateway and orchestrator.</summary>
    public string KeyFile => Path.Combine(Root, "token.key");

    public string StatePath => Path.Combine(Root, "state", "orchestrator.db");

    public string AgentsDirectory => Path.Combine(Root, "state", "agents");

    /// <summary>The gateway's public endpoint (what jbazel dials), e.g. http://127.0.0.1:41234.</summary>
    public string PublicAddress { get; private set; } = "";

    /// <summary>The gateway's agent endpoint.</summary>
    public string AgentAddress { get; private set; } = "";

    /// <summary>The orchestrator's own address (not used by clients in these tests except to show the gateway is optional).</summary>
    public string OrchestratorAddress { get; private set; } = "";

    /// <summary>Redirects process logs to the current test's output.</summary>
    public void AttachLog(Action<string> log) => _log = log;

    /// <summary>
    /// Starts the stack; <paramref name="withGateway"/> false points the orchestrator at a gateway that is not running.
    /// <paramref name="environment"/> is given to the gateway and the orchestrator (whose agents inherit it), e.g.
    /// short token lifetimes.
    /// </summary>
    public static async Task<TunnelStack> StartAsync(Action<string> log, bool withGateway = true, IReadOnlyDictionary<string, string>? environment = null)
    {
        var stack = new TunnelStack(Directory.CreateTempSubdirectory("rbs-tunnel-test-").FullName, log, environment);
        if (!OperatingSystem.IsWindows())
        {
            // Two users as root: their agents run under uids of their own and must be able to reach the state directory.
            File.SetUnixFileMode(stack.Root, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute);
        }

        try
        {
            await stack.StartCoreAsync(withGateway);
            return stack;
        }
        catch
        {
            await stack.DisposeAsync();
            throw;
        }
    }

    private async Task StartCoreAsync(bool withGateway)
    {
        var keyFile = KeyFile;
        await File.WriteAllTextAsync(keyFile, RbsTokenKeyRing.GenerateKey() + "\n");
        var apiKeysFile = Path.Combine(Root, "api-keys");
        await File.WriteAllTextAsync(apiKeysFile, $"# user:key\nalice:{AliceKey}\n\nbob:{BobKey}\n");

        var orchestratorPort = FreePort();
        OrchestratorAddress = $"http://127.0.0.1:{orchestratorPort}";
        if (withGateway)
        {
            await StartGatewayAsync("127.0.0.1:0", "127.0.0.1:0");
        }
        else
        {
            // Nothing listens on these: the gateway is "down".
            PublicAddress = $"http://127.0.0.1:{FreePort()}";
            AgentAddress = $"http://127.0.0.1:{FreePort()}";
        }

        var orchestratorReady = Path.Combine(Root, "orchestrator.json");
        Start("rbs-orchestrator", "--local-mode", "--port", orchestratorPort.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--state-path", StatePath, "--ready-file", orchestratorReady,
            // Two users as root: isolated agents run under their own uids and need binaries every uid can reach.
            "--agent-path", Rbs.Tests.Orchestrator.Isolation.ReachableBinaries.Agent, "--build-tool", Rbs.Tests.Orchestrator.Isolation.ReachableBinaries.FakeBazel,
            "--gateway-public-address", PublicAddress, "--gateway-agent-address", AgentAddress, "--token-key-file", keyFile,
            "--api-keys-file", apiKeysFile);
        await ReadWhenPresentAsync<OrchestratorReadyFile>(orchestratorReady);
    }

    private async Task StartGatewayAsync(string publicListen, string agentListen)
    {
        var gatewayReady = Path.Combine(Root, "gateway.json");
        File.Delete(gatewayReady);
        _gateway = Start("rbs-gateway", "--public-listen", publicListen, "--agent-listen", agentListen,
            "--orchestrator", OrchestratorAddress, "--token-key-file", KeyFile, "--ready-file", gatewayReady);
        var ready = await ReadWhenPresentAsync<GatewayReadyFile>(gatewayReady);
        PublicAddress = ready.PublicAddress;
        AgentAddress = ready.AgentAddress;
    }

    /// <summary>Kills the gateway (SIGKILL, as a crash would); agents and orchestrator live on.</summary>
    public async Task KillGatewayAsync()
    {
        var gateway = _gateway ?? throw new InvalidOperationException("no gateway is running");
        _log($"killing rbs-gateway (pid {gateway.Id})");
        gateway.Kill(entireProcessTree: true);
        await gateway.WaitForExitAsync().WaitAsync(Timeout);
        _processes.Remove(gateway);
        gateway.Dispose();
        _gateway = null;
    }

    /// <summary>Starts the gateway again on the addresses it had (agents and clients know only those).</summary>
    public Task RestartGatewayAsync()
    {
        if (_gateway is not null)
        {
            throw new InvalidOperationException("the gateway is still running");
        }

        return StartGatewayAsync(new Uri(PublicAddress).Authority, new Uri(AgentAddress).Authority);
    }

    /// <summary>The orchestrator-side client of the gateway's registration API (what a tunnel GetServer asks).</summary>
    internal AgentRegistrationClient RegistrationClient() =>
        new(new Uri(AgentAddress + "/"), () => new RbsTokenService(RbsTokenKeyRing.ReadKeyFile(KeyFile), TimeProvider.System)
            .Mint(RbsTokenKind.Internal, "orchestrator", "orchestrator", TimeSpan.FromMinutes(2)), new SocketsHttpHandler());

    /// <summary>GetServer straight to <paramref name="address"/> (the gateway's public endpoint by default).</summary>
    /// <param name="repoHash">The repo hash to ask for; default a test-only hash of the path (jbazel's differs).</param>
    public async Task<GetServerResponse> GetServerAsync(string? apiKey, string workspace, ConnectMode mode, string? address = null, bool syncWorkspace = false, string? repoHash = null)
    {
        using var channel = GrpcChannel.ForAddress(address ?? PublicAddress);
        var client = new V1.Orchestrator.OrchestratorClient(channel);
        var headers = new Metadata();
        if (apiKey is not null)
        {
            headers.Add("authorization", "Bearer " + apiKey);
        }

        return await client.GetServerAsync(
            new GetServerRequest { RepoHash = repoHash ?? RepoHashOf(workspace), SourcePath = workspace, ConnectMode = mode, SyncWorkspace = syncWorkspace },
            headers).ResponseAsync.WaitAsync(Timeout);
    }

    public static string RepoHashOf(string workspace) => "h" + Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(workspace)))[..40];

    /// <summary>
    /// Agent files matching <paramref name="pattern"/> wherever the orchestrator puts them: its agents directory, and with
    /// user isolation (two users, root) each user's <c>.agents</c> directory.
    /// </summary>
    public IReadOnlyList<string> AgentFiles(string pattern)
    {
        var directories = new List<string> { AgentsDirectory };
        var workspaces = Path.Combine(Root, "state", "workspaces");
        if (Directory.Exists(workspaces))
        {
            directories.AddRange(Directory.EnumerateDirectories(workspaces).Select(user => Path.Combine(user, ".agents")));
        }

        return [.. directories.Where(Directory.Exists).SelectMany(d => Directory.EnumerateFiles(d, pattern))];
    }

    /// <summary>Agent ids the orchestrator spawned (by their log files, which outlive the agents).</summary>
    public IReadOnlyList<string> SpawnedAgentIds() =>
        Directory.Exists(AgentsDirectory)
            ? [.. Directory.EnumerateFiles(AgentsDirectory, "*.log").Select(Path.GetFileNameWithoutExtension).OfType<string>()]
            : [];

    public async ValueTask DisposeAsync()
    {
        await StartedProcesses.StopAllAsync(_processes, _log);

        // Agents run in their own sessions (they survive orchestrator restarts): kill them by id.
        foreach (var agentId in SpawnedAgentIds())
        {
            foreach (var pid in UnixProcesses.FindAgentProcesses(agentId))
            {
                UnixProcesses.Signal(-pid, UnixProcesses.SigKill);
                UnixProcesses.Signal(pid, UnixProcesses.SigKill);
            }

            DumpAgentLog(agentId);
        }

        try
        {
            Directory.Delete(Root, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    public void DumpAgentLog(string agentId)
    {
        var log = Path.Combine(AgentsDirectory, agentId + ".log");
        if (File.Exists(log))
        {
            foreach (var line in File.ReadLines(log).TakeLast(40))
            {
                _log($"[agent {agentId}] {line}");
            }
        }
    }

    private Process Start(string executable, params string[] args)
    {
        var path = Path.Combine(AppContext.BaseDirectory, executable);
        var info = new ProcessStartInfo(path) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        // The test host's own ASP.NET settings must not leak into the children.
        foreach (var name in info.Environment.Keys.Where(k => k.StartsWith("Orchestrator__", StringComparison.Ordinal) || k.StartsWith("Gateway__", StringComparison.Ordinal) || k.StartsWith("RBS_", StringComparison.Ordinal)).ToList())
        {
            info.Environment.Remove(name);
        }

        foreach (var (name, value) in _environment)
        {
            info.Environment[name] = value;
        }

        _log($"$ {executable} {string.Join(' ', args)}");
        var process = Process.Start(info) ?? throw new InvalidOperationException($"{executable} did not start");
        _processes.Add(process);
        process.OutputDataReceived += (_, e) => Write(executable, e.Data);
        process.ErrorDataReceived += (_, e) => Write(executable, e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    private void Write(string source, string? line)
    {
        if (line is null)
        {
            return;
        }

        try
        {
            _log($"[{source}] {line}");
        }
        catch (InvalidOperationException)
        {
            // The test that owned the output already finished.
        }
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

            if (_processes.Any(p => p.HasExited))
            {
                throw new InvalidOperationException($"a process exited before writing {path}");
            }

            await Task.Delay(25, cts.Token);
        }
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
