using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Grpc.Core;
using Grpc.Net.Client;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Orchestrator.Security;
using Rbs.Tests.Agent;
using Rbs.V1;

namespace Rbs.Tests.Tunnel;

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
    private Action<string> _log;

    private TunnelStack(string root, Action<string> log)
    {
        Root = root;
        _log = log;
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

    /// <summary>Starts the stack; <paramref name="withGateway"/> false points the orchestrator at a gateway that is not running.</summary>
    public static async Task<TunnelStack> StartAsync(Action<string> log, bool withGateway = true)
    {
        var stack = new TunnelStack(Directory.CreateTempSubdirectory("rbs-tunnel-test-").FullName, log);
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
        await File.WriteAllTextAsync(keyFile, RbsTokenService.GenerateKey() + "\n");
        var apiKeysFile = Path.Combine(Root, "api-keys");
        await File.WriteAllTextAsync(apiKeysFile, $"# user:key\nalice:{AliceKey}\n\nbob:{BobKey}\n");

        var orchestratorPort = FreePort();
        OrchestratorAddress = $"http://127.0.0.1:{orchestratorPort}";
        if (withGateway)
        {
            var gatewayReady = Path.Combine(Root, "gateway.json");
            Start("rbs-gateway", "--public-listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0",
                "--orchestrator", OrchestratorAddress, "--token-key-file", keyFile, "--ready-file", gatewayReady);
            using var ready = JsonDocument.Parse(await ReadWhenPresentAsync(gatewayReady));
            PublicAddress = ready.RootElement.GetProperty("publicAddress").GetString()!;
            AgentAddress = ready.RootElement.GetProperty("agentAddress").GetString()!;
        }
        else
        {
            // Nothing listens on these: the gateway is "down".
            PublicAddress = $"http://127.0.0.1:{FreePort()}";
            AgentAddress = $"http://127.0.0.1:{FreePort()}";
        }

        var orchestratorReady = Path.Combine(Root, "orchestrator.json");
        Start("rbs-orchestrator", "--local-mode", "--port", orchestratorPort.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--state-path", StatePath, "--ready-file", orchestratorReady, "--build-tool", FakeBazel.Path,
            "--gateway-public-address", PublicAddress, "--gateway-agent-address", AgentAddress, "--token-key-file", keyFile,
            "--api-keys-file", apiKeysFile);
        await ReadWhenPresentAsync(orchestratorReady);
    }

    /// <summary>GetServer straight to <paramref name="address"/> (the gateway's public endpoint by default).</summary>
    public async Task<GetServerResponse> GetServerAsync(string? apiKey, string workspace, ConnectMode mode, string? address = null, bool syncWorkspace = false)
    {
        using var channel = GrpcChannel.ForAddress(address ?? PublicAddress);
        var client = new V1.Orchestrator.OrchestratorClient(channel);
        var headers = new Metadata();
        if (apiKey is not null)
        {
            headers.Add("authorization", "Bearer " + apiKey);
        }

        return await client.GetServerAsync(
            new GetServerRequest { RepoHash = RepoHashOf(workspace), SourcePath = workspace, ConnectMode = mode, SyncWorkspace = syncWorkspace },
            headers).ResponseAsync.WaitAsync(Timeout);
    }

    public static string RepoHashOf(string workspace) => "h" + Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(workspace)))[..40];

    /// <summary>Agent ids the orchestrator spawned (by their log files, which outlive the agents).</summary>
    public IReadOnlyList<string> SpawnedAgentIds() =>
        Directory.Exists(AgentsDirectory)
            ? [.. Directory.EnumerateFiles(AgentsDirectory, "*.log").Select(Path.GetFileNameWithoutExtension).OfType<string>()]
            : [];

    public async ValueTask DisposeAsync()
    {
        foreach (var process in Enumerable.Reverse(_processes))
        {
            try
            {
                if (!process.HasExited)
                {
                    process.Kill(entireProcessTree: true);
                    await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
                }
            }
            catch (Exception e) when (e is InvalidOperationException or TimeoutException or System.ComponentModel.Win32Exception)
            {
                _log($"could not stop pid {process.Id}: {e.Message}");
            }

            process.Dispose();
        }

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

    private void Start(string executable, params string[] args)
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

        _log($"$ {executable} {string.Join(' ', args)}");
        var process = Process.Start(info) ?? throw new InvalidOperationException($"{executable} did not start");
        _processes.Add(process);
        process.OutputDataReceived += (_, e) => Write(executable, e.Data);
        process.ErrorDataReceived += (_, e) => Write(executable, e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
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

    private async Task<string> ReadWhenPresentAsync(string path)
    {
        using var cts = new CancellationTokenSource(Timeout);
        while (!File.Exists(path))
        {
            if (_processes.Any(p => p.HasExited))
            {
                throw new InvalidOperationException($"a process exited before writing {path}");
            }

            await Task.Delay(25, cts.Token);
        }

        return await File.ReadAllTextAsync(path);
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
