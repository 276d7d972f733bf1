using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Grpc.Core;
using Grpc.Net.Client;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Orchestrator.Gateway;
using Rbs.Shared.Hosting;
using Rbs.Shared.Protocol;
using Rbs.Shared.Tokens;
using Rbs.Tests.Infrastructure;
using Rbs.V1;

namespace Rbs.Tests.Stacks.Replicas;

/// <summary>
/// Several rbs-gateway replicas (each on fixed loopback ports it advertises with <c>--advertise-agent-address</c>) in
/// front of one rbs-orchestrator --local-mode (user alice), whose real rbs-agents run fake-bazel.sh. The orchestrator
/// (and so each agent) knows replica <see cref="First"/>'s addresses only, as it would know a Service's. Every process
/// is killed on dispose (agents by id: they run in their own sessions).
/// </summary>
public sealed class ReplicaStack : IAsyncDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    public const string AliceKey = "alice-key-0123456789";

    /// <summary>Short heartbeats, so a killed replica's lease lapses in 3 s; a drain bound well below the test's patience.</summary>
    private static readonly Dictionary<string, string> s_gatewayEnvironment = new()
    {
        ["Gateway__ReplicaHeartbeatInterval"] = "00:00:01",
        ["Gateway__DrainTimeout"] = "00:00:15",
    };

    private readonly Dictionary<string, Replica> _replicas = new(StringComparer.Ordinal);
    private readonly List<Process> _processes = [];
    private readonly Action<string> _log;
    private RoundRobinRelay? _publicService;
    private RoundRobinRelay? _agentService;

    private ReplicaStack(string root, Action<string> log)
    {
        Root = root;
        _log = log;
    }

    public string Root { get; }

    public string KeyFile => Path.Combine(Root, "token.key");

    public string AgentsDirectory => Path.Combine(Root, "state", "agents");

    public string OrchestratorAddress { get; private set; } = "";

    /// <summary>The first replica; without a Service, the one whose addresses the orchestrator hands out.</summary>
    public Replica First { get; private set; } = null!;

    /// <summary>What clients dial: the public Service (a round-robin relay over every replica) if any, else <see cref="First"/>'s public endpoint.</summary>
    public string PublicAddress => _publicService?.Address ?? First.PublicAddress;

    /// <summary>What agents and the orchestrator dial: the agent Service if any, else <see cref="First"/>'s agent endpoint.</summary>
    public string AgentAddress => _agentService?.Address ?? First.AgentAddress;

    public Replica this[string id] => _replicas[id];

    /// <summary>Starts the orchestrator and replicas <paramref name="replicaIds"/> (the first is <see cref="First"/>).</summary>
    public static Task<ReplicaStack> StartAsync(Action<string> log, params string[] replicaIds) => StartAsync(log, withServices: false, replicaIds);

    /// <summary>
    /// Like <see cref="StartAsync(Action{string}, string[])"/>; <paramref name="withServices"/> puts a round-robin relay (a
    /// Service) in front of the replicas' public and of their agent endpoints, which clients, agents and the orchestrator dial.
    /// </summary>
    public static async Task<ReplicaStack> StartAsync(Action<string> log, bool withServices, params string[] replicaIds)
    {
        var stack = new ReplicaStack(Directory.CreateTempSubdirectory("rbs-replica-test-").FullName, log);
        if (withServices)
        {
            stack._publicService = new RoundRobinRelay();
            stack._agentService = new RoundRobinRelay();
        }

        try
        {
            await File.WriteAllTextAsync(stack.KeyFile, RbsTokenKeyRing.GenerateKey() + "\n");
            stack.OrchestratorAddress = $"http://127.0.0.1:{FreePort()}";
            foreach (var id in replicaIds)
            {
                var replica = stack._replicas[id] = new Replica(id, $"http://127.0.0.1:{FreePort()}", $"http://127.0.0.1:{FreePort()}");
                stack._publicService?.AddBackend(replica.PublicAddress);
                stack._agentService?.AddBackend(replica.AgentAddress);
            }

            stack.First = stack._replicas[replicaIds[0]];
            // The orchestrator first, so its pre-picked port is bound within a moment: started last, it stayed free for
            // seconds while the replicas started (their heartbeats dialling it), long enough for some connection to take
            // it as its ephemeral source port, and the orchestrator's bind failed once in CI ("address already in use").
            await stack.StartOrchestratorAsync();
            foreach (var id in replicaIds)
            {
                await stack.StartReplicaAsync(id);
            }

            return stack;
        }
        catch
        {
            await stack.DisposeAsync();
            throw;
        }
    }

    /// <summary>Adds (or restarts, on its old addresses) replica <paramref name="id"/>.</summary>
    public async Task<Replica> StartReplicaAsync(string id)
    {
        if (!_replicas.TryGetValue(id, out var replica))
        {
            replica = _replicas[id] = new Replica(id, $"http://127.0.0.1:{FreePort()}", $"http://127.0.0.1:{FreePort()}");
            _publicService?.AddBackend(replica.PublicAddress);
            _agentService?.AddBackend(replica.AgentAddress);
        }

        if (replica.Process is { HasExited: false })
        {
            throw new InvalidOperationException($"replica {id} is running");
        }

        var ready = Path.Combine(Root, $"gateway-{id}.json");
        File.Delete(ready);
        replica.Process = Start("rbs-gateway", s_gatewayEnvironment,
            "--public-listen", new Uri(replica.PublicAddress).Authority, "--agent-listen", new Uri(replica.AgentAddress).Authority,
            "--advertise-agent-address", replica.AgentAddress, "--replica-id", id,
            "--orchestrator", OrchestratorAddress, "--token-key-file", KeyFile, "--ready-file", ready);
        await ReadWhenPresentAsync<GatewayReadyFile>(ready);
        return replica;
    }

    /// <summary>SIGKILL (a crash): the replica neither drains nor says goodbye.</summary>
    public async Task KillReplicaAsync(string id)
    {
        var process = _replicas[id].Process ?? throw new InvalidOperationException($"replica {id} is not running");
        _log($"killing replica {id} (pid {process.Id})");
        process.Kill(entireProcessTree: true);
        await process.WaitForExitAsync().WaitAsync(Timeout);
    }

    /// <summary>SIGTERM (a rolling restart's stop): the replica drains, then exits.</summary>
    public void TerminateReplica(string id)
    {
        var process = _replicas[id].Process ?? throw new InvalidOperationException($"replica {id} is not running");
        _log($"SIGTERM to replica {id} (pid {process.Id})");
        UnixProcesses.Signal(process.Id, UnixProcesses.SigTerm);
    }

    public async Task<GetServerResponse> GetServerAsync(string workspace)
    {
        using var channel = GrpcChannel.ForAddress(PublicAddress);
        var client = new V1.Orchestrator.OrchestratorClient(channel);
        return await client.GetServerAsync(
            new GetServerRequest { RepoHash = Tunnel.TunnelStack.RepoHashOf(workspace), SourcePath = workspace, ConnectMode = ConnectMode.Tunnel, SyncWorkspace = true },
            new Metadata { { "authorization", "Bearer " + AliceKey } }).ResponseAsync.WaitAsync(Timeout);
    }

    /// <summary>GetStatus of the agent through replica <paramref name="id"/>'s public endpoint.</summary>
    public async Task<AgentStatus> GetStatusThroughAsync(string id, GetServerResponse server)
    {
        using var channel = GrpcChannel.ForAddress(_replicas[id].PublicAddress);
        var client = new V1.Agent.AgentClient(channel);
        var headers = new Metadata { { RbsHeaders.AgentRoute, server.Route }, { "authorization", "Bearer " + server.SessionToken } };
        return await client.GetStatusAsync(new GetStatusRequest(), headers).ResponseAsync.WaitAsync(Timeout);
    }

    /// <summary>Whether replica <paramref name="id"/> has a live tunnel of <paramref name="agentId"/> now (its rbs.v1.GatewayRegistry).</summary>
    public async Task<bool> IsRegisteredAtAsync(string id, string agentId)
    {
        using var client = new AgentRegistrationClient(new Uri(_replicas[id].AgentAddress + "/"),
            () => new RbsTokenService(RbsTokenKeyRing.ReadKeyFile(KeyFile), TimeProvider.System)
                .Mint(RbsTokenKind.Internal, "orchestrator", "orchestrator", TimeSpan.FromMinutes(2)),
            new SocketsHttpHandler());
        try
        {
            return await client.IsRegisteredAsync(agentId, TimeSpan.Zero, CancellationToken.None);
        }
        catch (RpcException)
        {
            return false;
        }
    }

    /// <summary>The agent's log so far (its file outlives it).</summary>
    public string AgentLog(string agentId)
    {
        var path = Path.Combine(AgentsDirectory, agentId + ".log");
        if (!File.Exists(path))
        {
            return string.Empty;
        }

        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        return new StreamReader(stream).ReadToEnd();
    }

    public async ValueTask DisposeAsync()
    {
        await StartedProcesses.StopAllAsync(_processes, _log);

        if (_publicService is not null)
        {
            await _publicService.DisposeAsync();
        }

        if (_agentService is not null)
        {
            await _agentService.DisposeAsync();
        }

        if (Directory.Exists(AgentsDirectory))
        {
            foreach (var agentId in Directory.EnumerateFiles(AgentsDirectory, "*.log").Select(Path.GetFileNameWithoutExtension).OfType<string>())
            {
                foreach (var pid in UnixProcesses.FindAgentProcesses(agentId))
                {
                    UnixProcesses.Signal(-pid, UnixProcesses.SigKill);
                    UnixProcesses.Signal(pid, UnixProcesses.SigKill);
                }

                foreach (var line in AgentLog(agentId).Split('\n').TakeLast(60))
                {
                    Write($"agent {agentId}", line);
                }
            }
        }

        try
        {
            Directory.Delete(Root, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    private async Task StartOrchestratorAsync()
    {
        var apiKeys = Path.Combine(Root, "api-keys");
        await File.WriteAllTextAsync(apiKeys, $"alice:{AliceKey}\n");
        var ready = Path.Combine(Root, "orchestrator.json");
        Start("rbs-orchestrator", new Dictionary<string, string>(),
            "--local-mode", "--port", new Uri(OrchestratorAddress).Port.ToString(CultureInfo.InvariantCulture),
            "--state-path", Path.Combine(Root, "state", "orchestrator.db"), "--ready-file", ready,
            "--agent-path", Orchestrator.Isolation.ReachableBinaries.Agent, "--build-tool", Orchestrator.Isolation.ReachableBinaries.FakeBazel,
            "--gateway-public-address", PublicAddress, "--gateway-agent-address", AgentAddress, "--token-key-file", KeyFile,
            "--api-keys-file", apiKeys);
        await ReadWhenPresentAsync<OrchestratorReadyFile>(ready);
    }

    private Process Start(string executable, IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        var info = new ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, executable)) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        foreach (var name in info.Environment.Keys.Where(k => k.StartsWith("Orchestrator__", StringComparison.Ordinal) || k.StartsWith("Gateway__", StringComparison.Ordinal) || k.StartsWith("RBS_", StringComparison.Ordinal)).ToList())
        {
            info.Environment.Remove(name);
        }

        foreach (var (name, value) in environment)
        {
            info.Environment[name] = value;
        }

        _log($"$ {executable} {string.Join(' ', args)}");
        var process = Process.Start(info) ?? throw new InvalidOperationException($"{executable} did not start");
        _processes.Add(process);
        var source = executable == "rbs-gateway" ? $"gateway {args[Array.IndexOf(args, "--replica-id") + 1]}" : executable;
        process.OutputDataReceived += (_, e) => Write(source, e.Data);
        process.ErrorDataReceived += (_, e) => Write(source, e.Data);
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

            if (_processes.Any(p => p.HasExited && p.ExitCode != 0 && p.ExitCode != 137 && p.ExitCode != -1))
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

    /// <summary>One replica: its id, its two endpoints and its process while it runs.</summary>
    public sealed class Replica(string id, string publicAddress, string agentAddress)
    {
        public string Id => id;

        public string PublicAddress => publicAddress;

        public string AgentAddress => agentAddress;

        internal Process? Process { get; set; }
    }
}
