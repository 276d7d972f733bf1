using Grpc.Core;
using Rbs.V1;

namespace Rbs.Tests.Gateway;

[Collection(TunnelCollection.Name)]
public sealed class TunnelStreamTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly TunnelTestEnvironment _env = new(output);

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => _env.StopAllAsync();

    [Fact]
    public async Task CommandStreamsThroughTheTunnelBinaryExactWithItsExitCode()
    {
        var gateway = await _env.StartGatewayAsync();
        var agent = await _env.StartAgentAsync("agent-a", gateway.AgentAddress, _env.JoinToken("agent-a"));
        await gateway.WaitRegisteredAsync("agent-a");
        var client = new V1.Agent.AgentClient(_env.Channel(gateway.PublicAddress));
        var metadata = TunnelTestEnvironment.Route("agent-a", _env.SessionToken("agent-a"));

        var (sha, length, exit) = await TunnelTestEnvironment.RunBytesAsync(client, metadata, 3 * 1024 * 1024 + 17, seed: 7, exitCode: 3)
            .WaitAsync(TunnelTestEnvironment.Timeout);

        Assert.Equal(3 * 1024 * 1024 + 17, length);
        Assert.Equal(DeterministicBytes.ExpectedSha256(length, 7), sha);
        Assert.Equal(3, exit);

        var status = await client.GetStatusAsync(new GetStatusRequest(), metadata).ResponseAsync.WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Equal("agent-a", status.AgentId);
    }

    [Fact]
    public async Task StdinRoundTripsThroughTheTunnel()
    {
        var gateway = await _env.StartGatewayAsync();
        var agent = await _env.StartAgentAsync("agent-a", gateway.AgentAddress, _env.JoinToken("agent-a"));
        await gateway.WaitRegisteredAsync("agent-a");
        var client = new V1.Agent.AgentClient(_env.Channel(gateway.PublicAddress));

        using var call = client.ExecuteCommand(TunnelTestEnvironment.Route("agent-a", _env.SessionToken("agent-a")));
        await call.RequestStream.WriteAsync(TunnelTestEnvironment.Start("echo"));
        var sent = new List<byte>();
        var chunk = new byte[1000];
        for (var i = 0; i < 50; i++)
        {
            Random.Shared.NextBytes(chunk);
            sent.AddRange(chunk);
            await call.RequestStream.WriteAsync(new ClientFrame { Stdin = Google.Protobuf.ByteString.CopyFrom(chunk) });
        }

        await call.RequestStream.WriteAsync(new ClientFrame { StdinEof = new StdinEof() });
        var received = new List<byte>();
        int? exit = null;
        await foreach (var frame in call.ResponseStream.ReadAllAsync().WithCancellation(new CancellationTokenSource(TunnelTestEnvironment.Timeout).Token))
        {
            if (frame.FrameCase == ServerFrame.FrameOneofCase.Stdout)
            {
                received.AddRange(frame.Stdout);
            }
            else if (frame.FrameCase == ServerFrame.FrameOneofCase.Exit)
            {
                exit = frame.Exit.Code;
            }
        }

        Assert.Equal(sent, received);
        Assert.Equal(0, exit);
    }
}
