using System.Globalization;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Orchestrator.Security;
using Rbs.Shared.Hosting;
using Rbs.Shared.Tokens;
using Rbs.Tests.Agent;

namespace Rbs.Tests.Shared.Hosting;

/// <summary>
/// rbs-gateway (optional) and rbs-orchestrator --local-mode as real processes on 127.0.0.1 with ephemeral ports,
/// whose real rbs-agents run <see cref="FakeBazel"/> (or <paramref name="buildTool"/>). Extra environment variables
/// reach both servers and, through the orchestrator, its agents (e.g. <c>Agent__Limits__HandshakeTimeout</c>).
/// Agents run in their own sessions, so dispose kills them by id.
/// </summary>
public sealed class LocalStack : IAsyncDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    private readonly ITestOutputHelper _output;

    private LocalStack(ITestOutputHelper output, string root)
    {
        _output = output;
        Root = root;
    }

    public string Root { get; }

    public ServerProcess? Gateway { get; private set; }

    public ServerProcess Orchestrator { get; private set; } = null!;

    /// <summary>The gateway's public endpoint (what jbazel dials in tunnel mode); empty without a gateway.</summary>
    public string PublicAddress { get; private set; } = "";

    public string GatewayAgentAddress { get; private set; } = "";

    public string OrchestratorAddress { get; private set; } = "";

    public string AgentsDirectory => Path.Combine(Root, "state", "agents");

    public static async Task<LocalStack> StartAsync(
        ITestOutputHelper output,
        bool withGateway = true,
        IReadOnlyDictionary<string, string?>? environment = null,
        string? buildTool = null,
        IEnumerable<string>? orchestratorArgs = null)
    {
        var stack = new LocalStack(output, Directory.CreateTempSubdirectory("rbs-local-stack-").FullName);
        try
        {
            await stack.StartCoreAsync(withGateway, environment, buildTool ?? FakeBazel.Path, orchestratorArgs ?? []);
            return stack;
        }
        catch
        {
            await stack.DisposeAsync();
            throw;
        }
    }

    private async Task StartCoreAsync(bool withGateway, IReadOnlyDictionary<string, string?>? environment, string buildTool, IEnumerable<string> orchestratorArgs)
    {
        var keyFile = Path.Combine(Root, "token.key");
        await File.WriteAllTextAsync(keyFile, RbsTokenKeyRing.GenerateKey() + "\n");
        var orchestratorPort = ServerProcess.FreePort();
        OrchestratorAddress = $"http://127.0.0.1:{orchestratorPort}";
        List<string> args =
        [
            "--local-mode", "--port", orchestratorPort.ToString(CultureInfo.InvariantCulture),
            "--state-path", Path.Combine(Root, "state", "orchestrator.db"), "--ready-file", Path.Combine(Root, "orchestrator.json"),
            "--build-tool", buildTool, .. orchestratorArgs,
        ];
        if (withGateway)
        {
            _environment = environment;
            var addresses = await StartGatewayAsync("127.0.0.1:0", "127.0.0.1:0");
            PublicAddress = addresses.PublicAddress;
            GatewayAgentAddress = addresses.AgentAddress;
            args.AddRange(["--gateway-public-address", PublicAddress, "--gateway-agent-address", GatewayAgentAddress, "--token-key-file", keyFile]);
        }

        Orchestrator = ServerProcess.Start(_output, "rbs-orchestrator", args, environment);
        await Orchestrator.ReadyFileAsync<OrchestratorReadyFile>(Path.Combine(Root, "orchestrator.json"), Timeout);
    }

    /// <summary>
    /// Kills the gateway and starts another on the same two addresses (a gateway replica taking over): agents dial
    /// their tunnels in again, clients reach it where they reached the first.
    /// </summary>
    public async Task RestartGatewayAsync()
    {
        Gateway!.Kill();
        await Gateway.WaitForExitAsync(Timeout);
        await Gateway.DisposeAsync();
        await StartGatewayAsync(new Uri(PublicAddress).Authority, new Uri(GatewayAgentAddress).Authority);
    }

    private IReadOnlyDictionary<string, string?>? _environment;

    private async Task<GatewayReadyFile> StartGatewayAsync(string publicListen, string agentListen)
    {
        var ready = Path.Combine(Root, "gateway.json");
        File.Delete(ready);
        Gateway = ServerProcess.Start(_output, "rbs-gateway",
            ["--public-listen", publicListen, "--agent-listen", agentListen, "--orchestrator", OrchestratorAddress, "--token-key-file", Path.Combine(Root, "token.key"), "--ready-file", ready],
            _environment);
        return await Gateway.ReadyFileAsync<GatewayReadyFile>(ready, Timeout);
    }

    /// <summary>Pid and direct address of every live agent, from their ready files.</summary>
    public IReadOnlyList<(string AgentId, int Pid, string Address)> Agents()
    {
        if (!Directory.Exists(AgentsDirectory))
        {
            return [];
        }

        var agents = new List<(string, int, string)>();
        foreach (var file in Directory.EnumerateFiles(AgentsDirectory, "*.json"))
        {
            // Null while being written or removed right now.
            if (ReadyFile.TryRead<AgentReadyFile>(file) is { } ready)
            {
                agents.Add((ready.AgentId, ready.Pid, ready.Address));
            }
        }

        return agents;
    }

    public async ValueTask DisposeAsync()
    {
        if (Gateway is not null)
        {
            await Gateway.DisposeAsync();
        }

        if (Orchestrator is not null)
        {
            await Orchestrator.DisposeAsync();
        }

        // Agents run in their own sessions (they survive orchestrator restarts): kill them by id.
        if (Directory.Exists(AgentsDirectory))
        {
            foreach (var log in Directory.EnumerateFiles(AgentsDirectory, "*.log"))
            {
                var agentId = Path.GetFileNameWithoutExtension(log);
                foreach (var pid in UnixProcesses.FindAgentProcesses(agentId))
                {
                    UnixProcesses.Signal(-pid, UnixProcesses.SigKill);
                    UnixProcesses.Signal(pid, UnixProcesses.SigKill);
                }

                foreach (var line in File.ReadLines(log).TakeLast(30))
                {
                    Infrastructure.TestLog.Write(_output, $"[agent {agentId}] {line}");
                }
            }
        }

        try
        {
            Directory.Delete(Root, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Infrastructure.TestLog.Write(_output, $"could not delete {Root}: {e.Message}");
        }
    }
}
