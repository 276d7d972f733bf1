using Rbs.Agent.Hosting;

namespace Rbs.Tests.Agent.Hosting;

/// <summary>The agent's Kestrel memory pool: 64 KiB blocks whatever the size asked, reused once returned.</summary>
public sealed class LargeBlockMemoryPoolTests
{
    [Theory]
    [InlineData(-1)]
    [InlineData(1)]
    [InlineData(4096)]
    [InlineData(LargeBlockMemoryPool.BlockSize)]
    public void EveryRentIsAWholeBlock(int size)
    {
        using var pool = new LargeBlockMemoryPool();
        using var block = pool.Rent(size);
        Assert.Equal(LargeBlockMemoryPool.BlockSize, block.Memory.Length);
        Assert.Equal(LargeBlockMemoryPool.BlockSize, pool.MaxBufferSize);
    }

    [Fact]
    public void MoreThanABlockIsRefused()
    {
        using var pool = new LargeBlockMemoryPool();
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.Rent(LargeBlockMemoryPool.BlockSize + 1));
    }

    [Fact]
    public void AReturnedBlockServesTheNextRentAndItsOldOwnerCannotReachIt()
    {
        using var pool = new LargeBlockMemoryPool();
        var first = pool.Rent();
        first.Memory.Span[0] = 42;
        first.Dispose();
        first.Dispose();

        using var second = pool.Rent();
        using var third = pool.Rent();
        Assert.Equal(42, second.Memory.Span[0]);
        Assert.Throws<ObjectDisposedException>(() => first.Memory);
        // A block disposed twice went back once: the next rent is a new block, not the one the second owner holds.
        Assert.False(second.Memory.Span.Overlaps(third.Memory.Span));
    }
}
