using System.Threading.Channels;
using Microsoft.Win32.SafeHandles;

namespace Rbs.Agent.Sync;

/// <summary>
/// Writes received blobs into staging on a task of its own, so creating files (most of a first sync's agent time is
/// the file system's: inode allocation, page-cache copies) overlaps reading, parsing and hashing the next frames
/// instead of following them. A blob goes to <c>&lt;digest&gt;.part</c> and is renamed to its digest name only when
/// its last chunk is queued with <c>last</c>, which the receiver does only after the whole blob hashed to its digest.
/// </summary>
/// <remarks>
/// At most <see cref="WritesInFlight"/> chunks are queued (each at most 1 MiB, and a batch frame's chunks are already
/// in memory), so the agent's memory stays bounded however fast the client sends. The first failure (a full disk)
/// stops the writer; the receiver's next <see cref="WriteAsync"/> or <see cref="CompleteAsync"/> throws it as is.
/// </remarks>
internal sealed class StagedBlobWriter : IAsyncDisposable
{
    /// <summary>Chunks queued ahead of the writer: 32 (a few hundred KiB of small files, at most 32 MiB of large ones).</summary>
    public const int WritesInFlight = 32;

    private readonly Channel<BlobWrite> _writes = Channel.CreateBounded<BlobWrite>(
        new BoundedChannelOptions(WritesInFlight) { SingleReader = true, SingleWriter = true });

    private readonly Task _writer;

    public StagedBlobWriter()
    {
        _writer = Task.Run(WriteAllAsync);
    }

    /// <summary>
    /// Queues a chunk of the blob staged at <paramref name="staged"/> (waits while the queue is full). The chunk at
    /// offset 0 creates (or truncates) the blob's <c>.part</c> file.
    /// </summary>
    /// <param name="last">The blob is complete and verified: after this chunk it is renamed to <paramref name="staged"/>.</param>
    public async ValueTask WriteAsync(string staged, ReadOnlyMemory<byte> data, long offset, bool last, CancellationToken cancellationToken)
    {
        var write = new BlobWrite(staged, data, offset, last);
        if (_writes.Writer.TryWrite(write))
        {
            return;
        }

        try
        {
            await _writes.Writer.WriteAsync(write, cancellationToken);
        }
        catch (ChannelClosedException)
        {
            // The writer stopped on a failure: that failure is the one to report.
            await _writer;
            throw;
        }
    }

    /// <summary>Waits until every queued chunk is written and renamed; throws the writer's failure, if any.</summary>
    public Task CompleteAsync()
    {
        _writes.Writer.TryComplete();
        return _writer;
    }

    /// <summary>Stops after what is queued (a receiver that failed); the writer's own failure is then not reported.</summary>
    public async ValueTask DisposeAsync()
    {
        _writes.Writer.TryComplete();
        try
        {
            await _writer;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // The receiver's failure is in flight; the .part files are deleted by the sync's cleanup.
        }
    }

    private async Task WriteAllAsync()
    {
        SafeFileHandle? part = null;
        try
        {
            await foreach (var write in _writes.Reader.ReadAllAsync())
            {
                var path = write.Staged + ".part";
                if (write.Offset == 0)
                {
                    part?.Dispose();
                    // A bare handle and positioned writes (no FileStream): open, write, close, nothing else per small blob.
                    // No fsync per blob (10k small files would pay 10k of them): a killed agent loses nothing the kernel
                    // already has; only a power loss could leave a placed file without its content (the journal and the
                    // index are fsynced).
                    part = File.OpenHandle(path, FileMode.Create, FileAccess.Write, FileShare.ReadWrite);
                }

                RandomAccess.Write(part!, write.Data.Span, write.Offset);
                if (write.Last)
                {
                    part!.Dispose();
                    part = null;
                    // rename(2) alone (File.Move stats both paths first); both names are in one shard directory.
                    if (!WorkspaceTree.TryRename(path, write.Staged))
                    {
                        throw new IOException($"rename '{path}' -> '{write.Staged}' crossed filesystems inside one directory.");
                    }
                }
            }
        }
        catch (Exception ex)
        {
            _writes.Writer.TryComplete(ex);
            throw;
        }
        finally
        {
            part?.Dispose();
        }
    }

    private readonly record struct BlobWrite(string Staged, ReadOnlyMemory<byte> Data, long Offset, bool Last);
}
