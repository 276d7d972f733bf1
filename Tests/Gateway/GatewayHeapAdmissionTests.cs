using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;
using Rbs.Gateway.Hosting;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.Gateway;

/// <summary>
/// A gateway whose heap is near its limit (Gateway:StreamAdmissionHeapPercent of Gateway:HeapLimit, or of the runtime's
/// own limit) admits no new stream: one waits, logged as EventId 135, and runs binary-exact once the heap has room; one
/// that waits longer than TunnelAcquireTimeout gets an actionable Unavailable. Streams in flight are never cut. The heap's
/// size is stood in for (<see cref="GatewayHeap.Measure"/>): the test runner's heap is the in-process gateway's.
/// </summary>
[Collection(TunnelCollection.Name)]
public sealed class GatewayHeapAdmissionTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const long MiB = 1024 * 1024;

    private readonly TunnelTestEnvironment _env = new(output);

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => _env.StopAllAsync();

    [Fact]
    public async Task NewStreamsWaitWhileTheHeapIsNearItsLimitAndRunOnceItHasRoom()
    {
        var gateway = await _env.StartGatewayAsync(settings: new Dictionary<string, string?>
        {
            ["Gateway:TunnelAcquireTimeout"] = "00:00:03",
            ["Gateway:StreamAdmissionHeapPercent"] = "80",
        });
        var heap = gateway.App.Services.GetRequiredService<GatewayHeap>();
        await _env.StartAgentAsync("agent-heap", gateway.AgentAddress, _env.JoinToken("agent-heap"));
        await gateway.WaitRegisteredAsync("agent-heap");
        var client = new V1.Agent.AgentClient(_env.Channel(gateway.PublicAddress));
        var metadata = TunnelTestEnvironment.Route("agent-heap", _env.SessionToken("agent-heap"));

        // Room: 79 MiB of a 100 MiB limit.
        heap.Measure = () => (79 * MiB, 100 * MiB);
        var first = await TunnelTestEnvironment.RunBytesAsync(client, metadata, 1000, seed: 3).WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Equal(DeterministicBytes.ExpectedSha256(1000, 3), first.Sha256);

        // Full: 80 MiB of 100 is at the threshold. A stream waits the acquire timeout, then fails saying why.
        heap.Measure = () => (80 * MiB, 100 * MiB);
        var refused = await Assert.ThrowsAsync<RpcException>(() =>
            TunnelTestEnvironment.RunBytesAsync(client, metadata, 1000, seed: 1).WaitAsync(TunnelTestEnvironment.Timeout));
        Assert.Equal(StatusCode.Unavailable, refused.StatusCode);
        Assert.Contains("heap stayed above 80% of its limit (100 MiB", refused.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("retry later", refused.Status.Detail, StringComparison.Ordinal);

        // Another waits (logged), and runs binary-exact as soon as the heap has room again.
        const int Size = 300 * 1024 + 5;
        var waiting = TunnelTestEnvironment.RunBytesAsync(client, metadata, Size, seed: 9, exitCode: 3);
        await TestWait.EventuallyAsync(() => gateway.Logs.Count(135) >= 2, "the stream waits for heap room", timeout: TimeSpan.FromSeconds(10));
        Assert.False(waiting.IsCompleted);
        heap.Measure = () => (10 * MiB, 100 * MiB);
        var result = await waiting.WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Equal(Size, result.Length);
        Assert.Equal(DeterministicBytes.ExpectedSha256(Size, 9), result.Sha256);
        Assert.Equal(3, result.ExitCode);
    }

    [Fact]
    public async Task AHeapLimitBelowItsMinimumIsRefusedAtStartWithTheReason()
    {
        var error = await Assert.ThrowsAnyAsync<Exception>(() => _env.StartGatewayAsync(settings: new Dictionary<string, string?>
        {
            ["Gateway:HeapLimit"] = "1048576",
        }));
        Assert.Contains("Gateway:HeapLimit (--heap-limit) must be 0 (the runtime's own limit) or at least", error.ToString(), StringComparison.Ordinal);
    }
}
