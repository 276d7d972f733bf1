using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Grpc.Core;
using Grpc.Net.Client;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Orchestrator.Security;
using Rbs.Shared.Hosting;
using Rbs.Shared.Protocol;
using Rbs.Shared.Tokens;
using Rbs.Tests.Agent;
using Rbs.Tests.Infrastructure;
using Rbs.Tests.JBazel;
using Rbs.V1;

namespace Rbs.Tests.Stacks.Tunnel;

/// <summary>Starts one <see cref="TunnelStack"/> for all tests of the class (each test uses its own workspaces).</summary>
public sealed class TunnelStackFixture : IAsyncLifetime
{
    private readonly List<string> _early = [];
    private Action<string>? _sink;

    public TunnelStack Stack { get; private set; } = null!;

    public void Attach(ITestOutputHelper output)
    {
        _sink = line => TestLog.Write(output, line);
        Stack.AttachLog(_sink);
        lock (_early)
        {
            foreach (var line in _early)
            {
                _sink(line);
            }

            _early.Clear();
        }
    }

    // A command whose stream is lost waits for a reattach (docs/reattach.md) 5 s here instead of a minute, so a test of
    // a lost agent sees jbazel give up within its timeout.
    public async Task InitializeAsync() => Stack = await TunnelStack.StartAsync(
        line =>
        {
            lock (_early)
            {
                _early.Add(line);
            }
        },
        environment: new Dictionary<string, string> { ["Agent__Execution__ReattachGrace"] = "00:00:05" });

    public async Task DisposeAsync() => await Stack.DisposeAsync();
}

/// <summary>
/// Tunnel mode end to end with real processes: the real jbazel dials only the gateway's public address; GetServer is
/// proxied to the orchestrator, which spawns a real rbs-agent that dials out to the gateway; the build's bytes come
/// back through the agent's tunnel.
/// </summary>
public sealed partial class TunnelEndToEndTests : IClassFixture<TunnelStackFixture>, IDisposable
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(40);

    private readonly ITestOutputHelper _output;
    private readonly TunnelStack _stack;
    private readonly TempWorkspace _workspace = new();

    public TunnelEndToEndTests(TunnelStackFixture fixture, ITestOutputHelper output)
    {
        _output = output;
        fixture.Attach(output);
        _stack = fixture.Stack;
    }

    public void Dispose() => _workspace.Dispose();

    [Fact]
    public async Task BuildThroughTheGatewayIsBinaryExactKeepsTheExitCodeAndIsWarmTheSecondTime()
    {
        var input = RandomNumberGenerator.GetBytes((1 << 20) + 13);
        await using var first = Start(TunnelStack.AliceKey, ["cat"], closeStdin: false);
        await first.StandardInput.WriteAsync(input).AsTask().WaitAsync(s_timeout);
        first.StandardInput.Close();
        Assert.Equal(0, await first.WaitForExitAsync(s_timeout));
        Assert.True(input.AsSpan().SequenceEqual(first.Stdout), $"stdout differs: {first.Stdout.Length} bytes instead of {input.Length}");
        var cold = StatusLine(first.StderrText);
        Assert.Equal("cold", cold.Warmth);
        Assert.Equal("process", cold.Backend);

        await using var second = Start(TunnelStack.AliceKey, ["exit", "7"]);
        Assert.Equal(7, await second.WaitForExitAsync(s_timeout));
        var warm = StatusLine(second.StderrText);
        Assert.Equal("warm", warm.Warmth);
        Assert.Equal(cold.AgentId, warm.AgentId);
    }

    [Fact]
    public async Task MissingOrWrongApiKeyIsRefusedWithExit34AndTheFix()
    {
        await using var missing = Start(apiKey: null, ["exit", "0"]);
        Assert.Equal(34, await missing.WaitForExitAsync(s_timeout));
        Assert.Contains("this orchestrator requires an API key: pass --rbs_api_key or set RBS_API_KEY", missing.StderrText, StringComparison.Ordinal);

        await using var wrong = Start("not-a-key", ["exit", "0"]);
        Assert.Equal(34, await wrong.WaitForExitAsync(s_timeout));
        Assert.Contains("the API key was not accepted", wrong.StderrText, StringComparison.Ordinal);
        Assert.DoesNotContain(_stack.SpawnedAgentIds(), id => ReadSpec(id).Contains(_workspace.Root, StringComparison.Ordinal));
    }

    [Fact]
    public async Task UsersGetTheirOwnAgentsAndASessionTokenOpensOnlyItsOwnersAgent()
    {
        var alice = await _stack.GetServerAsync(TunnelStack.AliceKey, _workspace.Root, ConnectMode.Tunnel);
        var bob = await _stack.GetServerAsync(TunnelStack.BobKey, _workspace.Root, ConnectMode.Tunnel);
        _output.WriteLine($"alice: {alice}");
        _output.WriteLine($"bob: {bob}");

        Assert.NotEqual(alice.AgentId, bob.AgentId);
        foreach (var response in new[] { alice, bob })
        {
            // The client is sent to the gateway, never to the agent's own (loopback) listener.
            Assert.Equal(ConnectMode.Tunnel, response.ConnectMode);
            Assert.Equal(_stack.PublicAddress, response.Address);
            Assert.Equal(response.AgentId, response.Route);
            Assert.NotEmpty(response.SessionToken);
            // A laptop behind the gateway shares no filesystem with the agent: it syncs its tree.
            Assert.True(response.SyncRequired);
        }

        // An in-cluster client reaches the same agent directly (it syncs too: the agent builds its own copy).
        var direct = await _stack.GetServerAsync(TunnelStack.AliceKey, _workspace.Root, ConnectMode.Direct, syncWorkspace: true);
        Assert.Equal(alice.AgentId, direct.AgentId);
        Assert.True(direct.Warm);
        Assert.StartsWith("http://127.0.0.1:", direct.Address, StringComparison.Ordinal);
        Assert.NotEqual(_stack.PublicAddress, direct.Address);
        // Two users and root: agents run under their users' uids, and an isolated agent's loopback port takes only its
        // own access key, which GetServer returns in place of a (gateway) session token.
        Assert.NotEmpty(direct.SessionToken);
        Assert.NotEqual(alice.SessionToken, direct.SessionToken);

        using var channel = GrpcChannel.ForAddress(_stack.PublicAddress);
        var agents = new V1.Agent.AgentClient(channel);
        var own = await agents.GetStatusAsync(new GetStatusRequest(), Headers(alice.Route, alice.SessionToken)).ResponseAsync.WaitAsync(s_timeout);
        Assert.Equal(alice.AgentId, own.AgentId);

        var stolen = await Assert.ThrowsAsync<RpcException>(() =>
            agents.GetStatusAsync(new GetStatusRequest(), Headers(alice.Route, bob.SessionToken)).ResponseAsync.WaitAsync(s_timeout));
        _output.WriteLine($"bob's token on alice's route: {stolen.Status}");
        Assert.Equal(StatusCode.PermissionDenied, stolen.StatusCode);

        var anonymous = await Assert.ThrowsAsync<RpcException>(() =>
            agents.GetStatusAsync(new GetStatusRequest(), Headers(alice.Route, token: null)).ResponseAsync.WaitAsync(s_timeout));
        Assert.Equal(StatusCode.Unauthenticated, anonymous.StatusCode);
    }

    [Fact]
    public async Task AgentKilledMidStreamGivesExit38()
    {
        await using var jbazel = Start(TunnelStack.AliceKey, ["cat"], closeStdin: false);
        await jbazel.StandardInput.WriteAsync("hello\n"u8.ToArray()).AsTask().WaitAsync(s_timeout);
        await jbazel.StandardInput.FlushAsync();
        await jbazel.WaitForStdoutAsync("hello", s_timeout);
        var status = StatusLine(jbazel.StderrText);
        var pid = int.Parse(status.BackendRef, System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(UnixProcesses.IsAgentProcess(pid, status.AgentId), $"pid {pid} is not agent {status.AgentId}");

        UnixProcesses.Signal(pid, UnixProcesses.SigKill);
        Assert.Equal(38, await jbazel.WaitForExitAsync(s_timeout));
        Assert.Contains(status.AgentId, jbazel.StderrText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task TunnelOnlyAgentOpensNoListeningSocketAndServesThroughTheGateway()
    {
        var tokens = new RbsTokenService(RbsTokenKeyRing.ReadKeyFile(_stack.KeyFile), TimeProvider.System);
        var agentId = "tunnel-only-" + Guid.NewGuid().ToString("N")[..8];
        var joinFile = Path.Combine(_workspace.Base, "join");
        await File.WriteAllTextAsync(joinFile, tokens.Mint(RbsTokenKind.Join, agentId, "alice", TimeSpan.FromMinutes(5)));
        var readyFile = Path.Combine(_workspace.Base, "agent.json");
        var info = new ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, "rbs-agent")) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in new[] { "--agent-id", agentId, "--workspace", _workspace.Root, "--build-tool", FakeBazel.Path,
            "--gateway", _stack.AgentAddress, "--join-token-file", joinFile, "--ready-file", readyFile })
        {
            info.ArgumentList.Add(arg);
        }

        using var agent = Process.Start(info)!;
        agent.OutputDataReceived += (_, e) => Log(e.Data);
        agent.ErrorDataReceived += (_, e) => Log(e.Data);
        agent.BeginOutputReadLine();
        agent.BeginErrorReadLine();
        try
        {
            using var cts = new CancellationTokenSource(s_timeout);
            AgentReadyFile? ready;
            while ((ready = await ReadyFile.TryReadAsync<AgentReadyFile>(readyFile, cts.Token)) is null)
            {
                Assert.False(agent.HasExited, "rbs-agent exited before it was ready");
                await Task.Delay(25, cts.Token);
            }

            Assert.Equal("tunnel", ready.Address);
            Assert.Equal(agent.Id, ready.Pid);

            Assert.Empty(ListeningSockets(agent.Id));

            using var channel = GrpcChannel.ForAddress(_stack.PublicAddress);
            var client = new V1.Agent.AgentClient(channel);
            var status = await client.GetStatusAsync(new GetStatusRequest(),
                Headers(agentId, tokens.Mint(RbsTokenKind.Session, agentId, "alice", TimeSpan.FromMinutes(5)))).ResponseAsync.WaitAsync(s_timeout);
            Assert.Equal(agentId, status.AgentId);

            // Bob's token names the agent but the tunnel was joined as alice.
            var denied = await Assert.ThrowsAsync<RpcException>(() => client.GetStatusAsync(new GetStatusRequest(),
                Headers(agentId, tokens.Mint(RbsTokenKind.Session, agentId, "bob", TimeSpan.FromMinutes(5)))).ResponseAsync.WaitAsync(s_timeout));
            Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);
        }
        finally
        {
            agent.Kill(entireProcessTree: true);
            await agent.WaitForExitAsync().WaitAsync(s_timeout);
        }
    }

    /// <summary>TCP sockets in LISTEN state owned by <paramref name="pid"/> (from /proc).</summary>
    private static List<string> ListeningSockets(int pid)
    {
        var inodes = new HashSet<string>(StringComparer.Ordinal);
        foreach (var fd in Directory.EnumerateFileSystemEntries($"/proc/{pid}/fd"))
        {
            var target = new FileInfo(fd).LinkTarget;
            if (target is not null && target.StartsWith("socket:[", StringComparison.Ordinal))
            {
                inodes.Add(target[8..^1]);
            }
        }

        var listening = new List<string>();
        foreach (var table in new[] { "/proc/net/tcp", "/proc/net/tcp6" })
        {
            foreach (var line in File.ReadLines(table).Skip(1))
            {
                var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (fields.Length > 9 && fields[3] == "0A" && inodes.Contains(fields[9]))
                {
                    listening.Add($"{table}: {fields[1]}");
                }
            }
        }

        return listening;
    }

    private void Log(string? line)
    {
        if (line is not null)
        {
            TestLog.Write(_output, "[rbs-agent] " + line);
        }
    }

    private JBazelProcess Start(string? apiKey, string[] toolArgs, bool closeStdin = true)
    {
        string[] args =
        [
            $"--rbs_orchestrator={_stack.PublicAddress}", "--rbs_connect=tunnel", "--rbs_status=always", "--rbs_timeout=60s",
            .. apiKey is null ? Array.Empty<string>() : [$"--rbs_api_key={apiKey}"],
            .. toolArgs,
        ];
        var jbazel = JBazelProcess.Start(_output, _workspace.Root, _workspace.Home, new Dictionary<string, string?>(), args);
        if (closeStdin)
        {
            jbazel.StandardInput.Close();
        }

        return jbazel;
    }

    private string ReadSpec(string agentId)
    {
        var path = Path.Combine(_stack.AgentsDirectory, agentId + ".spec");
        return File.Exists(path) ? File.ReadAllText(path) : string.Empty;
    }

    private static Metadata Headers(string route, string? token)
    {
        var headers = new Metadata { { RbsHeaders.AgentRoute, route } };
        if (token is not null)
        {
            headers.Add("authorization", "Bearer " + token);
        }

        return headers;
    }

    internal static (string AgentId, string Backend, string BackendRef, string Warmth) StatusLine(string stderr)
    {
        var match = StatusPattern().Match(stderr);
        Assert.True(match.Success, $"no status line in stderr: {stderr}");
        return (match.Groups[1].Value, match.Groups[2].Value, match.Groups[3].Value, match.Groups[4].Value);
    }

    [GeneratedRegex(@"rbs: agent (\S+) \((\S+) (\S+)\) (warm|cold) in \d+ ms")]
    private static partial Regex StatusPattern();
}
