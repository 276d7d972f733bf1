using Grpc.Core;
using Rbs.V1;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.Gateway;

/// <summary>
/// Gateway:MaxConcurrentStreams bounds the streams the gateway forwards at once (and so its stream buffers): a stream
/// beyond it waits for a slot and runs once one frees; one that waits longer than TunnelAcquireTimeout gets Unavailable.
/// </summary>
[Collection(TunnelCollection.Name)]
public sealed class GatewayStreamLimitTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly TunnelTestEnvironment _env = new(output);

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => _env.StopAllAsync();

    [Fact]
    public async Task StreamsBeyondTheLimitWaitForASlotAndFailOnlyAfterTheAcquireTimeout()
    {
        var gateway = await _env.StartGatewayAsync(settings: new Dictionary<string, string?>
        {
            ["Gateway:MaxConcurrentStreams"] = "1",
            ["Gateway:TunnelAcquireTimeout"] = "00:00:03",
        });
        var agent = await _env.StartAgentAsync("agent-limit", gateway.AgentAddress, _env.JoinToken("agent-limit"));
        await gateway.WaitRegisteredAsync("agent-limit");
        var client = new V1.Agent.AgentClient(_env.Channel(gateway.PublicAddress));
        var metadata = TunnelTestEnvironment.Route("agent-limit", _env.SessionToken("agent-limit"));

        // The one slot: a stream that runs until the client cancels it.
        using var holderCts = new CancellationTokenSource();
        using var holder = client.ExecuteCommand(metadata, cancellationToken: holderCts.Token);
        await holder.RequestStream.WriteAsync(TunnelTestEnvironment.Start("forever"));
        Assert.True(await holder.ResponseStream.MoveNext().WaitAsync(TunnelTestEnvironment.Timeout));
        Assert.Equal(ServerFrame.FrameOneofCase.Started, holder.ResponseStream.Current.FrameCase);

        // A second stream waits the acquire timeout, then fails with an actionable Unavailable.
        var refused = await Assert.ThrowsAsync<RpcException>(() =>
            TunnelTestEnvironment.RunBytesAsync(client, metadata, 1000, seed: 1).WaitAsync(TunnelTestEnvironment.Timeout));
        Assert.Equal(StatusCode.Unavailable, refused.StatusCode);
        Assert.Contains("maximum of 1 concurrent streams", refused.Status.Detail, StringComparison.Ordinal);

        // A third one queues (its wait is logged), and runs binary-exact as soon as the holder ends.
        const int Size = 300 * 1024 + 3;
        var queued = TunnelTestEnvironment.RunBytesAsync(client, metadata, Size, seed: 7, exitCode: 2);
        await TestWait.EventuallyAsync(() => gateway.Logs.Count(134) >= 2, "the third stream queued", timeout: TimeSpan.FromSeconds(10));
        Assert.False(queued.IsCompleted);
        await holderCts.CancelAsync();
        var result = await queued.WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Equal(Size, result.Length);
        Assert.Equal(DeterministicBytes.ExpectedSha256(Size, 7), result.Sha256);
        Assert.Equal(2, result.ExitCode);
    }
}
