using Rbs.JBazel.Configuration;
using Rbs.JBazel.Remote;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Tests.Shared.Hosting;

namespace Rbs.Tests.JBazel;

/// <summary>
/// Issue 10 defect 8: jbazel's messages name what actually failed and the next step. Before: with the gateway down it
/// said "cannot reach the orchestrator ... Start it with 'rbs-orchestrator --local-mode'" about the gateway's address,
/// and after a gateway kill mid-stream "a new agent will be allocated if it died" although the agent was alive. Real
/// jbazel, real servers.
/// </summary>
public sealed class ErrorMessageTests(ITestOutputHelper output) : IDisposable
{
    private readonly TempWorkspace _workspace = new();

    public void Dispose() => _workspace.Dispose();

    [Theory]
    [InlineData("flag", "--rbs_orchestrator on the command line")]
    [InlineData("env", "environment variable RBS_ORCHESTRATOR")]
    [InlineData("rc", ".jbazelrc:2")]
    public async Task AnUnreachableAddressIsNamedWithWhereItWasSetAndTheChecksThatFitIt(string source, string expected)
    {
        // Where a gateway is expected: nothing listens there ("the gateway is down").
        var address = $"http://127.0.0.1:{ServerProcess.FreePort()}";
        var environment = new Dictionary<string, string?>();
        List<string> args = ["build", "//..."];
        switch (source)
        {
            case "flag":
                args.Insert(0, $"--rbs_orchestrator={address}");
                break;
            case "env":
                environment["RBS_ORCHESTRATOR"] = address;
                break;
            default:
                await File.WriteAllTextAsync(Path.Combine(_workspace.Root, SettingsResolver.RcFileName), $"# the team's gateway\n--rbs_orchestrator={address}\n");
                break;
        }

        await using var jbazel = JBazelProcess.Start(output, _workspace.Root, _workspace.Home, environment, args);
        jbazel.StandardInput.Close();

        Assert.Equal(38, await jbazel.WaitForExitAsync(LocalStack.Timeout));
        var line = Assert.Single(jbazel.StderrText.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"rbs: cannot reach {address} (connection refused), the RBS orchestrator or gateway address set by ", line, StringComparison.Ordinal);
        Assert.Contains(expected, line, StringComparison.Ordinal);
        Assert.Contains("or your gateway", line, StringComparison.Ordinal);
    }

    [Fact]
    public void ARemoteAddressGetsTheChecksOfARemoteAddress()
    {
        var line = GetServerClient.UnreachableMessage(new Uri("https://rbs.example.com:8443"), RbsSettings.DefaultSource, "host not found");

        Assert.Equal(
            "cannot reach https://rbs.example.com:8443 (host not found), the RBS orchestrator or gateway address set by the built-in default " +
            "(no --rbs_orchestrator, RBS_ORCHESTRATOR or .jbazelrc sets it). Check that rbs.example.com is reachable from this machine " +
            "(network, VPN, firewall) and that its server is up (if it is a gateway, its operator can tell), or correct --rbs_orchestrator / RBS_ORCHESTRATOR.",
            line);
    }

    [Fact]
    public async Task WhenTheOrchestratorBehindTheGatewayIsDownTheGatewaySaysSo()
    {
        await using var stack = await LocalStack.StartAsync(output);
        stack.Orchestrator.Kill();
        await stack.Orchestrator.WaitForExitAsync(LocalStack.Timeout);

        await using var jbazel = JBazelProcess.Start(output, _workspace.Root, _workspace.Home, new Dictionary<string, string?>(),
            [$"--rbs_orchestrator={stack.PublicAddress}", "--rbs_connect=tunnel", "exit", "0"]);
        jbazel.StandardInput.Close();

        Assert.Equal(38, await jbazel.WaitForExitAsync(LocalStack.Timeout));
        var line = Assert.Single(jbazel.StderrText.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"rbs: {stack.PublicAddress} could not provide an agent (Unavailable): the gateway is up, but cannot reach the orchestrator at {stack.OrchestratorAddress} behind it (", line, StringComparison.Ordinal);
        Assert.Contains("its operator must start it", line, StringComparison.Ordinal);
    }

    [Fact]
    public async Task AGatewayKilledMidStreamIsNamedAndTheLiveAgentIsNotDeclaredDead()
    {
        // The agent keeps the command for its reattach grace time (docs/reattach.md), and jbazel tries to reattach
        // through the gateway that long: 3 s here.
        await using var stack = await LocalStack.StartAsync(output, environment: new Dictionary<string, string?> { ["Agent__Execution__ReattachGrace"] = "00:00:03" });
        await using var jbazel = JBazelProcess.Start(output, _workspace.Root, _workspace.Home, new Dictionary<string, string?>(),
            [$"--rbs_orchestrator={stack.PublicAddress}", "--rbs_connect=tunnel", "trap-int"]);
        await jbazel.WaitForStdoutAsync("ready", LocalStack.Timeout);
        var agent = Assert.Single(stack.Agents());

        stack.Gateway!.Kill();

        Assert.Equal(38, await jbazel.WaitForExitAsync(LocalStack.Timeout));
        var line = Assert.Single(jbazel.StderrText.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"rbs: lost the connection to the gateway at {stack.PublicAddress} mid-command and could not reattach to invocation ", line, StringComparison.Ordinal);
        Assert.Contains("within the agent's grace time of 3 s", line, StringComparison.Ordinal);
        Assert.EndsWith($"agent {agent.AgentId} stops the command. Run the command again once the gateway answers; the same agent serves it.", line, StringComparison.Ordinal);
        Assert.DoesNotContain("allocated", line, StringComparison.Ordinal);
        // The agent is alive indeed.
        Assert.Contains(agent.Pid, UnixProcesses.FindAgentProcesses(agent.AgentId));
    }
}
