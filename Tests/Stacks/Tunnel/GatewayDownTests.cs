using Grpc.Core;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Tests.Infrastructure;
using Rbs.Tests.JBazel;
using Rbs.V1;

namespace Rbs.Tests.Stacks.Tunnel;

/// <summary>The orchestrator is configured for a gateway that is not running.</summary>
public sealed class GatewayDownTests(ITestOutputHelper output)
{
    [Fact]
    public async Task TunnelGetServerFailsWithAClearUnavailableAndLeavesNoAgentWhileDirectStillWorks()
    {
        await using var stack = await TunnelStack.StartAsync(Log, withGateway: false);
        using var workspace = new TempWorkspace();

        var error = await Assert.ThrowsAsync<RpcException>(() =>
            stack.GetServerAsync(TunnelStack.AliceKey, workspace.Root, ConnectMode.Tunnel, stack.OrchestratorAddress));
        Log($"tunnel GetServer: {error.Status}");
        Assert.Equal(StatusCode.Unavailable, error.StatusCode);
        Assert.Contains("gateway", error.Status.Detail, StringComparison.Ordinal);
        Assert.Contains(stack.AgentAddress, error.Status.Detail, StringComparison.Ordinal);

        // The agent started for this call was stopped: no process, no ready file (its log stays for post-mortems).
        var spawned = stack.SpawnedAgentIds();
        Assert.Single(spawned);
        Assert.Empty(UnixProcesses.FindAgentProcesses(spawned[0]));
        Assert.Empty(stack.AgentFiles("*.json"));
        Assert.Empty(stack.AgentFiles("*.join"));

        // jbazel shows the reason as one line and exits 38 (transient: start the gateway and run again).
        await using (var jbazel = JBazelProcess.Start(output, workspace.Root, workspace.Home, new Dictionary<string, string?>(),
            [$"--rbs_orchestrator={stack.OrchestratorAddress}", "--rbs_connect=tunnel", $"--rbs_api_key={TunnelStack.AliceKey}", "exit", "0"]))
        {
            jbazel.StandardInput.Close();
            Assert.Equal(38, await jbazel.WaitForExitAsync(TunnelStack.Timeout));
            Assert.Contains("could not provide an agent (Unavailable)", jbazel.StderrText, StringComparison.Ordinal);
            Assert.Contains(stack.AgentAddress, jbazel.StderrText, StringComparison.Ordinal);
        }

        Assert.Empty(stack.AgentFiles("*.json"));

        // Direct mode does not depend on the gateway: process agents also listen on loopback.
        var direct = await stack.GetServerAsync(TunnelStack.AliceKey, workspace.Root, ConnectMode.Direct, stack.OrchestratorAddress);
        Assert.Equal(ConnectMode.Direct, direct.ConnectMode);
        Assert.StartsWith("http://127.0.0.1:", direct.Address, StringComparison.Ordinal);

        // UNSPECIFIED means the server's default, which is tunnel once a gateway is configured.
        var unspecified = await Assert.ThrowsAsync<RpcException>(() =>
            stack.GetServerAsync(TunnelStack.AliceKey, workspace.Root, ConnectMode.Unspecified, stack.OrchestratorAddress));
        Assert.Equal(StatusCode.Unavailable, unspecified.StatusCode);
    }

    private void Log(string line) => TestLog.Write(output, line);
}
