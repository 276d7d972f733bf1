using Grpc.Core;
using Grpc.Net.Client;
using Rbs.Shared.Text;
using Rbs.Tests.JBazel;
using Rbs.Tests.Shared.Hosting;
using Rbs.V1;

namespace Rbs.Tests.Orchestrator;

/// <summary>
/// Issue 10 defect 6: a server that repeats client input in a status must not repeat all of it. A 1 MiB source_path
/// copied into the status made the reply's headers exceed the client's 64 KiB: it saw Unavailable (through the gateway
/// "cannot reach the orchestrator") instead of InvalidArgument. Real processes: gateway, orchestrator, agent, jbazel.
/// </summary>
public sealed class EchoedInputTests(ITestOutputHelper output)
{
    private const int OneMiB = 1024 * 1024;

    [Fact]
    public async Task AOneMebibyteSourcePathIsInvalidArgumentDirectlyAndThroughTheGatewayWithAShortMessage()
    {
        await using var stack = await LocalStack.StartAsync(output);
        var request = new GetServerRequest { RepoHash = "echo", SourcePath = new string('x', OneMiB), ConnectMode = ConnectMode.Direct };

        foreach (var address in new[] { stack.OrchestratorAddress, stack.PublicAddress })
        {
            using var channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions { MaxSendMessageSize = 4 * OneMiB });
            var error = await Assert.ThrowsAsync<RpcException>(() => new V1.Orchestrator.OrchestratorClient(channel)
                .GetServerAsync(request, deadline: DateTime.UtcNow.Add(LocalStack.Timeout)).ResponseAsync);

            output.WriteLine($"{address}: {error.StatusCode}, {error.Status.Detail.Length} chars: {error.Status.Detail}");
            Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
            Assert.StartsWith($"source_path '{new string('x', UntrustedText.MaxEchoedChars)}… ({OneMiB} chars)' is relative", error.Status.Detail, StringComparison.Ordinal);
            Assert.True(error.Status.Detail.Length < 400, $"the status echoes {error.Status.Detail.Length} characters");
        }
    }

    [Theory]
    [InlineData("direct")]
    [InlineData("tunnel")]
    public async Task JBazelGetsTheAgentsInvalidArgumentEndToEndAndExits34(string connect)
    {
        await using var stack = await LocalStack.StartAsync(output);
        using var workspace = new TempWorkspace();
        // jbazel forwards every LC_* variable; one whose name alone is 100,000 characters is client input the agent
        // refuses (its environment limit) and names in its status.
        var name = "LC_" + new string('N', 100_000);
        var address = connect == "tunnel" ? stack.PublicAddress : stack.OrchestratorAddress;

        await using var jbazel = JBazelProcess.Start(output, workspace.Root, workspace.Home, new Dictionary<string, string?> { [name] = "C" },
            [$"--rbs_orchestrator={address}", $"--rbs_connect={connect}", "exit", "0"]);
        jbazel.StandardInput.Close();

        Assert.Equal(34, await jbazel.WaitForExitAsync(LocalStack.Timeout));
        var line = Assert.Single(jbazel.StderrText.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains("rejected the command (InvalidArgument): the start frame's env is ", line, StringComparison.Ordinal);
        Assert.Contains($"The largest variable is LC_NNN", line, StringComparison.Ordinal);
        Assert.Contains($"… ({name.Length} chars)", line, StringComparison.Ordinal);
        Assert.True(line.Length < 1000, $"jbazel's line is {line.Length} characters long");
    }
}
