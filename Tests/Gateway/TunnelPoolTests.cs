using Rbs.Gateway.Tunnel;

namespace Rbs.Tests.Gateway;

/// <summary>
/// The one record of an agent's live and idle tunnels: who owns a tunnel taken out of the idle list, waiting
/// callers, and cancellation. The pool never touches a tunnel's stream, so the tunnels here have none.
/// </summary>
public sealed class TunnelPoolTests
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);

    private static GatewayTunnel NewTunnel() => new(null!, null!);

    [Fact]
    public async Task TakeReturnsTheNewestIdleTunnelAndLeavesItLive()
    {
        var pool = new TunnelPool();
        var older = NewTunnel();
        var newer = NewTunnel();
        pool.Add(older);
        pool.Add(newer);

        Assert.Same(newer, await pool.TakeAsync(CancellationToken.None));
        Assert.Equal((2, 1), pool.Counts);
        Assert.Same(older, await pool.TakeAsync(CancellationToken.None));
        Assert.Equal((2, 0), pool.Counts);
    }

    [Fact]
    public async Task AWaitingCallerIsHandedTheNextTunnelInArrivalOrder()
    {
        var pool = new TunnelPool();
        var first = pool.TakeAsync(CancellationToken.None).AsTask();
        var second = pool.TakeAsync(CancellationToken.None).AsTask();
        Assert.False(first.IsCompleted || second.IsCompleted);

        var a = NewTunnel();
        var b = NewTunnel();
        pool.Add(a);
        Assert.Same(a, await first.WaitAsync(s_timeout));
        Assert.False(second.IsCompleted);
        pool.Add(b);
        Assert.Same(b, await second.WaitAsync(s_timeout));
        // Handed over directly: never counted idle.
        Assert.Equal((2, 0), pool.Counts);
    }

    [Fact]
    public async Task ACancelledWaitLeavesNoWaiterBehind()
    {
        var pool = new TunnelPool();
        using var cts = new CancellationTokenSource();
        var waiting = pool.TakeAsync(cts.Token).AsTask();
        await cts.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting.WaitAsync(s_timeout));

        // The next tunnel is idle, not handed to the cancelled caller.
        var tunnel = NewTunnel();
        pool.Add(tunnel);
        Assert.Equal((1, 1), pool.Counts);
        Assert.Same(tunnel, await pool.TakeAsync(CancellationToken.None));
    }

    [Fact]
    public async Task ATakenTunnelCannotBeEvictedAndAnEvictedOneCannotBeTaken()
    {
        var pool = new TunnelPool();
        var taken = NewTunnel();
        pool.Add(taken);
        Assert.Same(taken, await pool.TakeAsync(CancellationToken.None));
        Assert.False(pool.TryEvictIdle(taken), "the idle watch must not close a tunnel a connection owns");

        var evicted = NewTunnel();
        pool.Add(evicted);
        Assert.True(pool.TryEvictIdle(evicted));
        Assert.False(pool.TryEvictIdle(evicted));
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(50));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => pool.TakeAsync(cts.Token).AsTask());
        // Evicted from the idle list, still live until its WebSocket request ends.
        Assert.Equal((2, 0), pool.Counts);
        Assert.Equal(1, pool.Remove(evicted));
        Assert.Equal(0, pool.Remove(taken));
    }

    [Fact]
    public void RemovingAnIdleTunnelTakesItOutOfTheIdleListToo()
    {
        var pool = new TunnelPool();
        var tunnel = NewTunnel();
        pool.Add(tunnel);
        Assert.Equal(0, pool.Remove(tunnel));
        Assert.Equal((0, 0), pool.Counts);
        Assert.False(pool.TryEvictIdle(tunnel));
    }

    [Fact]
    public async Task ConcurrentTakersAndAddersEachGetADistinctTunnel()
    {
        var pool = new TunnelPool();
        const int Count = 200;
        var takers = Enumerable.Range(0, Count).Select(_ => Task.Run(() => pool.TakeAsync(CancellationToken.None).AsTask())).ToArray();
        var tunnels = Enumerable.Range(0, Count).Select(_ => NewTunnel()).ToArray();
        await Task.WhenAll(tunnels.Select(t => Task.Run(() => pool.Add(t))));

        var got = await Task.WhenAll(takers).WaitAsync(s_timeout);
        Assert.Equal(Count, got.Distinct().Count());
        Assert.Equal((Count, 0), pool.Counts);
    }
}
