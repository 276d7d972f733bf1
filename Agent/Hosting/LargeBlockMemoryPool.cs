using System.Buffers;
using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Microsoft.AspNetCore.Connections;

namespace Rbs.Agent.Hosting;

/// <summary>
/// Kestrel's memory pool for the agent: 64 KiB blocks instead of 4 KiB ones. Kestrel's socket transport reads into the
/// rest of the current block, so with 4 KiB blocks an upload arrives ~2 KiB per recv() (a first sync of 193 MiB was
/// ~100k recv calls); with 64 KiB blocks it takes what the socket holds. Unlike the gateway (thousands of connections,
/// each holding a block of buffered output), the agent serves a handful of connections, so the larger blocks cost
/// little: a connection holds at most its request and response buffer limits in blocks (bench/README.md, "Sixth round").
/// </summary>
internal sealed class LargeBlockMemoryPoolFactory : IMemoryPoolFactory<byte>, IDisposable
{
    private readonly LargeBlockMemoryPool _pool = new();

    /// <summary>One pool for every listener: blocks freed by one connection serve the next.</summary>
    public MemoryPool<byte> Create(MemoryPoolOptions? options = null) => _pool;

    public void Dispose() => _pool.Dispose();
}

/// <summary>Pinned 64 KiB blocks, reused through a queue; the pool keeps at most <see cref="MaxRetainedBlocks"/> free ones.</summary>
internal sealed class LargeBlockMemoryPool : MemoryPool<byte>
{
    /// <summary>The block size: 64 KiB, up to what one socket read or one HTTP/2 frame write uses at a time.</summary>
    public const int BlockSize = 64 * 1024;

    /// <summary>Free blocks kept for reuse (16 MiB); a block returned beyond that is left to the GC.</summary>
    public const int MaxRetainedBlocks = 256;

    private readonly ConcurrentQueue<byte[]> _free = new();

    public override int MaxBufferSize => BlockSize;

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(minBufferSize, BlockSize);
        // Pinned (on the pinned object heap): the socket pins the memory of every read and write, which is then free.
        var block = _free.TryDequeue(out var reused) ? reused : GC.AllocateUninitializedArray<byte>(BlockSize, pinned: true);
        return new Block(this, block);
    }

    protected override void Dispose(bool disposing)
    {
        // Blocks still rented come back through Return and are kept or dropped there; nothing to release.
    }

    private void Return(byte[] block)
    {
        if (_free.Count < MaxRetainedBlocks)
        {
            _free.Enqueue(block);
        }
    }

    private sealed class Block(LargeBlockMemoryPool pool, byte[] array) : IMemoryOwner<byte>
    {
        private byte[]? _array = array;

        public Memory<byte> Memory => _array is { } a ? MemoryMarshal.CreateFromPinnedArray(a, 0, a.Length) : throw new ObjectDisposedException(nameof(Block));

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _array, null) is { } a)
            {
                pool.Return(a);
            }
        }
    }
}
