using System.Diagnostics;
using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.Options;
using Rbs.V1;

namespace Rbs.Agent.Sync;

/// <summary>
/// rbs.v1.WorkspaceSync: makes the workspace an exact copy of the client's tree (protocol: sync.proto). Nothing in the
/// workspace changes until every needed blob has arrived and been verified; the change itself is journaled.
/// </summary>
internal sealed partial class WorkspaceSyncService(
    WorkspaceSynchronizer synchronizer,
    IOptions<WorkspaceSyncOptions> options,
    SyncMetrics metrics,
    ILogger<WorkspaceSyncService> logger) : WorkspaceSync.WorkspaceSyncBase
{
    private const int MaxChunkBytes = 1 << 20;
    private const int NeedBatchSize = 1024;

    public override async Task Sync(
        IAsyncStreamReader<SyncClientFrame> requestStream,
        IServerStreamWriter<SyncServerFrame> responseStream,
        ServerCallContext context)
    {
        var cancellationToken = context.CancellationToken;
        var stopwatch = Stopwatch.StartNew();
        // Held until the partial uploads are gone: they belong to this sync, and the next one may start right after.
        IDisposable? held = null;
        var applying = false;
        try
        {
            var begin = (await ReadAsync(requestStream, SyncClientFrame.FrameOneofCase.Begin, "begin", cancellationToken)).Begin;
            ManifestReceiver.CheckBegin(options.Value, begin);
            Log.SyncStarted(logger, context.Peer, begin.EntryCount, begin.TotalBytes);
            held = await synchronizer.AcquireAsync(cancellationToken);
            synchronizer.Recover();

            var disk = WorkspaceTree.Walk(synchronizer.Workspace);
            var index = synchronizer.LoadIndexOrNull();
            if (index is not null && index.Digest == Convert.ToHexStringLower(begin.ManifestDigest.Span) && WorkspaceSynchronizer.Matches(index, disk))
            {
                await responseStream.WriteAsync(new SyncServerFrame { Done = new SyncDone { UpToDate = true } }, cancellationToken);
                Log.UpToDate(logger, begin.EntryCount, stopwatch.ElapsedMilliseconds);
                metrics.SyncUpToDate();
                return;
            }

            await responseStream.WriteAsync(new SyncServerFrame { ManifestWanted = new ManifestWanted { BlobBatches = true } }, cancellationToken);
            var manifest = await ReceiveManifestAsync(requestStream, begin, cancellationToken);
            var plan = Plan(manifest, index, disk);
            await SendNeedsAsync(responseStream, plan, cancellationToken);
            var (blobs, bytes) = await ReceiveBlobsAsync(requestStream, plan, cancellationToken);

            // Content that moves or is copied inside the tree is staged first, so deleting its old path cannot lose it.
            foreach (var (digest, source) in plan.FromTree)
            {
                cancellationToken.ThrowIfCancellationRequested();
                if (!synchronizer.Store.StageCopy(Path.Combine(synchronizer.Workspace, source.Path), digest, source.Size))
                {
                    // Edited on the agent without changing size or mtime: stop trusting the index.
                    synchronizer.Store.DeleteIndex();
                    throw new RpcException(new Status(StatusCode.Aborted,
                        $"'{SyncPaths.Shown(source.Path)}' changed on the agent while syncing; retry the sync."));
                }
            }

            // From here on the tree changes; the journal makes that all-or-nothing even if the agent dies, and the
            // client going away no longer matters.
            var journal = new SavedTree(manifest.Digest, [.. manifest.Entries]);
            applying = true;
            synchronizer.Store.SaveJournal(journal);
            var counts = synchronizer.Applier.Apply(journal);
            var done = new SyncDone
            {
                FilesWritten = counts.FilesWritten,
                EntriesDeleted = counts.EntriesDeleted,
                DirectoriesCreated = counts.DirectoriesCreated,
                SymlinksWritten = counts.SymlinksWritten,
                BlobsReceived = blobs,
                BytesReceived = bytes,
                ApplyMillis = counts.ApplyMillis,
            };
            Log.SyncDone(logger, manifest.ListedCount, done.BlobsReceived, done.BytesReceived, done.FilesWritten, done.EntriesDeleted,
                done.DirectoriesCreated, done.SymlinksWritten, done.ApplyMillis, stopwatch.ElapsedMilliseconds);
            metrics.SyncApplied(done.BytesReceived, done.FilesWritten);
            await responseStream.WriteAsync(new SyncServerFrame { Done = done }, cancellationToken);
        }
        catch (RpcException ex)
        {
            Log.Rejected(logger, ex.StatusCode, ex.Status.Detail);
            throw;
        }
        catch (OperationCanceledException)
        {
            if (held is not null)
            {
                DeletePartialUploads();
            }

            Log.Cancelled(logger, stopwatch.ElapsedMilliseconds);
            throw;
        }
        catch (IOException ex) when (DiskFull.Is(ex))
        {
            // Not an internal error: the next step is to free space on the agent, then run the command again.
            Log.DiskFull(logger, synchronizer.Workspace, synchronizer.Store.Directory, ex.Message);
            throw new RpcException(new Status(StatusCode.ResourceExhausted,
                $"the agent's disk is full: {ex.Message.TrimEnd('.')} (workspace {synchronizer.Workspace}, sync state {synchronizer.Store.Directory}). " +
                (applying
                    ? "The new tree is half applied; the agent completes it at the next sync once there is space. "
                    : "The agent's workspace is unchanged. ") +
                "Free space on the agent's disk (its administrator can enlarge the volume or remove unused agent workspaces), then run the command again."));
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or InvalidDataException)
        {
            Log.Failed(logger, ex);
            throw new RpcException(new Status(StatusCode.Internal,
                $"the agent could not sync its workspace: {ex.Message} (the agent completes an unfinished change before the next sync, or when it restarts)."));
        }
        finally
        {
            if (held is not null)
            {
                // Only with the lock: without it, the .part files are another sync's uploads in progress.
                DeletePartialUploads();
                held.Dispose();
            }
        }
    }

    private async Task<SyncManifest> ReceiveManifestAsync(IAsyncStreamReader<SyncClientFrame> requestStream, SyncBegin begin, CancellationToken cancellationToken)
    {
        using var builder = new ManifestReceiver(options.Value, begin);
        while (true)
        {
            var frame = await ReadAsync(requestStream, null, "manifest or manifest_end", cancellationToken);
            switch (frame.FrameCase)
            {
                case SyncClientFrame.FrameOneofCase.Manifest:
                    foreach (var entry in frame.Manifest.Entries)
                    {
                        builder.Add(entry);
                    }

                    break;
                case SyncClientFrame.FrameOneofCase.ManifestEnd:
                    return builder.Finish(synchronizer.IsCaseInsensitive());
                default:
                    throw OutOfOrder("manifest or manifest_end", frame.FrameCase);
            }
        }
    }

    private sealed record SyncPlan(List<(string Digest, long Size)> Needed, List<(string Digest, TreeEntry Source)> FromTree);

    /// <summary>
    /// Decides per file whether it is already in place (same digest, verified by size and mtime) and which content
    /// must come from the client: anything not in place, not already staged and not in another current file.
    /// </summary>
    private SyncPlan Plan(SyncManifest manifest, SavedTree? index, Dictionary<string, DiskEntry> disk)
    {
        var trusted = new Dictionary<string, TreeEntry>(StringComparer.Ordinal);
        var inTree = new Dictionary<string, TreeEntry>(StringComparer.Ordinal);
        foreach (var entry in index?.Entries ?? [])
        {
            if (entry.Kind == EntryKind.File && disk.TryGetValue(entry.Path, out var found) && found.Kind == EntryKind.File &&
                found.Size == entry.Size && found.MtimeTicks == entry.MtimeTicks)
            {
                trusted[entry.Path] = entry;
                if (entry.Size > 0)
                {
                    inTree.TryAdd(entry.Digest, entry);
                }
            }
        }

        var wanted = manifest.Entries.Where(e => e.Kind == EntryKind.File).Select(e => e.Digest).ToHashSet(StringComparer.Ordinal);
        synchronizer.Store.PruneStaging(wanted);
        var staged = synchronizer.Store.StagedDigests();

        var needed = new List<(string, long)>();
        var fromTree = new List<(string, TreeEntry)>();
        var planned = new HashSet<string>(StringComparer.Ordinal);
        foreach (var entry in manifest.Entries)
        {
            if (entry.Kind != EntryKind.File)
            {
                continue;
            }

            entry.Write = !(trusted.TryGetValue(entry.Path, out var current) && current.Digest == entry.Digest);
            if (!entry.Write)
            {
                // Recorded in the new index without another lstat (a change after this makes the next sync rewrite it).
                entry.MtimeTicks = current!.MtimeTicks;
            }

            if (!entry.Write || entry.Size == 0 || staged.Contains(entry.Digest) || !planned.Add(entry.Digest))
            {
                continue;
            }

            if (inTree.TryGetValue(entry.Digest, out var source))
            {
                fromTree.Add((entry.Digest, source));
            }
            else
            {
                needed.Add((entry.Digest, entry.Size));
            }
        }

        return new SyncPlan(needed, fromTree);
    }

    private static async Task SendNeedsAsync(IServerStreamWriter<SyncServerFrame> responseStream, SyncPlan plan, CancellationToken cancellationToken)
    {
        foreach (var chunk in plan.Needed.Chunk(NeedBatchSize))
        {
            var batch = new NeedBatch();
            batch.Digests.AddRange(chunk.Select(n => ByteString.CopyFrom(Convert.FromHexString(n.Digest))));
            await responseStream.WriteAsync(new SyncServerFrame { Need = batch }, cancellationToken);
        }

        await responseStream.WriteAsync(new SyncServerFrame
        {
            NeedEnd = new NeedEnd { BlobCount = (ulong)plan.Needed.Count, BlobBytes = (ulong)plan.Needed.Sum(n => n.Size) },
        }, cancellationToken);
    }

    /// <summary>
    /// Streams each needed blob to a .part file in staging, verifying size and SHA-256, then names it by digest. The
    /// files are written by a <see cref="StagedBlobWriter"/> while the next chunks are read and hashed.
    /// </summary>
    private async Task<(ulong Blobs, ulong Bytes)> ReceiveBlobsAsync(
        IAsyncStreamReader<SyncClientFrame> requestStream,
        SyncPlan plan,
        CancellationToken cancellationToken)
    {
        ulong bytes = 0;
        var chunks = new ChunkReader(requestStream, plan);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        await using var writer = new StagedBlobWriter();
        for (var i = 0; i < plan.Needed.Count; i++)
        {
            var (digest, size) = plan.Needed[i];
            var staged = synchronizer.Store.StagedPath(digest);
            long received = 0;
            while (received < size)
            {
                var chunk = await chunks.NextAsync(i, received, cancellationToken);
                CheckChunk(plan, i, received, chunk);
                hash.AppendData(chunk.Data.Span);
                var offset = received;
                received += chunk.Data.Length;
                var last = received == size;
                if (last)
                {
                    // Only a verified blob gets its digest name: the last chunk is queued after the check.
                    var actual = Convert.ToHexStringLower(hash.GetHashAndReset());
                    if (actual != digest)
                    {
                        throw SyncPaths.Invalid($"digest mismatch: the {size} bytes sent as blob {digest} hash to {actual}.");
                    }
                }

                await writer.WriteAsync(staged, chunk.Data.Memory, offset, last, cancellationToken);
            }

            bytes += (ulong)size;
        }

        await writer.CompleteAsync();
        if (chunks.Leftover is { } extra)
        {
            throw SyncPaths.Invalid($"blob {Convert.ToHexStringLower(extra.Digest.Span)} was not needed (all {plan.Needed.Count} needed blobs were complete).");
        }

        var end = await ReadAsync(requestStream, null, "upload_end", cancellationToken);
        if (end.FrameCase != SyncClientFrame.FrameOneofCase.UploadEnd)
        {
            throw end.FrameCase switch
            {
                SyncClientFrame.FrameOneofCase.Blob =>
                    SyncPaths.Invalid($"blob {Convert.ToHexStringLower(end.Blob.Digest.Span)} was not needed (all {plan.Needed.Count} needed blobs were complete)."),
                SyncClientFrame.FrameOneofCase.Blobs when end.Blobs.Chunks.Count > 0 =>
                    SyncPaths.Invalid($"blob {Convert.ToHexStringLower(end.Blobs.Chunks[0].Digest.Span)} was not needed (all {plan.Needed.Count} needed blobs were complete)."),
                _ => OutOfOrder("upload_end", end.FrameCase),
            };
        }

        return ((ulong)plan.Needed.Count, bytes);
    }

    /// <summary>
    /// The rules every chunk follows, whether it came alone or in a batch: the next piece of the blob due (need order,
    /// contiguous offsets), at most <see cref="MaxChunkBytes"/>, never past the size the manifest lists.
    /// </summary>
    private static void CheckChunk(SyncPlan plan, int blob, long received, BlobChunk chunk)
    {
        if (blob >= plan.Needed.Count)
        {
            throw SyncPaths.Invalid($"blob {Convert.ToHexStringLower(chunk.Digest.Span)} was not needed (all {plan.Needed.Count} needed blobs were complete).");
        }

        var (digest, size) = plan.Needed[blob];
        var chunkDigest = Convert.ToHexStringLower(chunk.Digest.Span);
        if (chunkDigest != digest)
        {
            throw SyncPaths.Invalid($"expected a chunk of blob {digest} (blobs come in need order), got one of {chunkDigest}.");
        }

        if (chunk.Offset != (ulong)received)
        {
            throw SyncPaths.Invalid($"blob {digest}: chunk at offset {chunk.Offset}, expected {received}.");
        }

        if (chunk.Data.Length > MaxChunkBytes)
        {
            throw SyncPaths.Invalid($"blob {digest}: a chunk of {chunk.Data.Length} bytes; chunks are at most {MaxChunkBytes} bytes.");
        }

        if (received + chunk.Data.Length > size)
        {
            throw SyncPaths.Invalid($"blob {digest}: more than the {size} bytes the manifest lists.");
        }
    }

    /// <summary>
    /// The uploaded chunks in order, from <c>blob</c> frames and <c>blobs</c> batches alike. A batch is checked as a
    /// whole when it arrives, before any of its chunks is written: one bad chunk refuses all of it.
    /// </summary>
    private sealed class ChunkReader(IAsyncStreamReader<SyncClientFrame> requestStream, SyncPlan plan)
    {
        private BlobBatch? _batch;
        private int _next;

        /// <summary>A chunk of the current batch that no needed blob took (the upload sent more than was needed).</summary>
        public BlobChunk? Leftover => _batch is not null && _next < _batch.Chunks.Count ? _batch.Chunks[_next] : null;

        /// <param name="blob">Index of the blob being received (for the messages and the batch check).</param>
        /// <param name="received">Bytes of it received so far.</param>
        public async ValueTask<BlobChunk> NextAsync(int blob, long received, CancellationToken cancellationToken)
        {
            while (true)
            {
                if (_batch is not null && _next < _batch.Chunks.Count)
                {
                    return _batch.Chunks[_next++];
                }

                _batch = null;
                var (digest, _) = plan.Needed[blob];
                var frame = await ReadAsync(requestStream, null, $"blob {digest}", cancellationToken);
                switch (frame.FrameCase)
                {
                    case SyncClientFrame.FrameOneofCase.Blob:
                        return frame.Blob;
                    case SyncClientFrame.FrameOneofCase.Blobs:
                        CheckBatch(frame.Blobs, blob, received);
                        _batch = frame.Blobs;
                        _next = 0;
                        break;
                    default:
                        throw SyncPaths.Invalid(
                            $"expected blob {digest} ({blob + 1} of {plan.Needed.Count} needed), got {Name(frame.FrameCase)}; send every needed blob before upload_end.");
                }
            }
        }

        private void CheckBatch(BlobBatch batch, int blob, long received)
        {
            foreach (var chunk in batch.Chunks)
            {
                CheckChunk(plan, blob, received, chunk);
                received += chunk.Data.Length;
                if (received == plan.Needed[blob].Size)
                {
                    blob++;
                    received = 0;
                }
            }
        }
    }

    private void DeletePartialUploads()
    {
        try
        {
            foreach (var part in synchronizer.Store.StagedFiles().Where(f => f.EndsWith(".part", StringComparison.Ordinal)).ToList())
            {
                File.Delete(part);
            }
        }
        catch (IOException)
        {
            // Best effort: the next sync prunes staging anyway.
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    private static async Task<SyncClientFrame> ReadAsync(
        IAsyncStreamReader<SyncClientFrame> requestStream,
        SyncClientFrame.FrameOneofCase? expected,
        string what,
        CancellationToken cancellationToken)
    {
        bool more;
        try
        {
            more = await requestStream.MoveNext(cancellationToken);
        }
        catch (IOException ex)
        {
            // Kestrel reports a client that reset its stream (cancelled the call) as an IOException.
            throw new OperationCanceledException("the client reset the sync stream", ex, cancellationToken);
        }

        if (!more)
        {
            throw SyncPaths.Invalid($"the client ended the stream while the agent expected {what}; the workspace was not changed.");
        }

        var frame = requestStream.Current;
        if (expected is { } kind && frame.FrameCase != kind)
        {
            throw OutOfOrder(what, frame.FrameCase);
        }

        return frame;
    }

    private static RpcException OutOfOrder(string expected, SyncClientFrame.FrameOneofCase got) =>
        SyncPaths.Invalid($"protocol order: expected {expected}, got {Name(got)} (see rbs.v1.WorkspaceSync in sync.proto).");

    private static string Name(SyncClientFrame.FrameOneofCase frame) => frame switch
    {
        SyncClientFrame.FrameOneofCase.Begin => "begin",
        SyncClientFrame.FrameOneofCase.Manifest => "manifest",
        SyncClientFrame.FrameOneofCase.ManifestEnd => "manifest_end",
        SyncClientFrame.FrameOneofCase.Blob => "blob",
        SyncClientFrame.FrameOneofCase.UploadEnd => "upload_end",
        SyncClientFrame.FrameOneofCase.Blobs => "blobs",
        _ => "an empty frame",
    };

    private static partial class Log
    {
        [LoggerMessage(EventId = 610, Level = LogLevel.Information, Message = "Sync from {Peer} started: {Entries} entries, {Bytes} bytes")]
        public static partial void SyncStarted(ILogger logger, string peer, ulong entries, ulong bytes);

        [LoggerMessage(EventId = 611, Level = LogLevel.Information, Message = "Sync: workspace already up to date ({Entries} entries) in {Millis} ms")]
        public static partial void UpToDate(ILogger logger, ulong entries, long millis);

        [LoggerMessage(EventId = 612, Level = LogLevel.Information,
            Message = "Sync done: {Entries} entries, {Blobs} blobs ({Bytes} bytes) received, {Files} files written, {Deleted} deleted, {Dirs} directories and {Symlinks} symlinks created; apply {ApplyMillis} ms, total {Millis} ms")]
        public static partial void SyncDone(ILogger logger, int entries, ulong blobs, ulong bytes, ulong files, ulong deleted, ulong dirs, ulong symlinks, long applyMillis, long millis);

        [LoggerMessage(EventId = 613, Level = LogLevel.Warning, Message = "Sync rejected ({Code}): {Detail}")]
        public static partial void Rejected(ILogger logger, StatusCode code, string detail);

        [LoggerMessage(EventId = 614, Level = LogLevel.Information, Message = "Sync cancelled by the client after {Millis} ms; the workspace was not changed")]
        public static partial void Cancelled(ILogger logger, long millis);

        [LoggerMessage(EventId = 615, Level = LogLevel.Error, Message = "Sync failed")]
        public static partial void Failed(ILogger logger, Exception exception);

        [LoggerMessage(EventId = 617, Level = LogLevel.Error, Message = "Sync failed: the disk is full (workspace {Workspace}, sync state {StateDirectory}): {Reason}")]
        public static partial void DiskFull(ILogger logger, string workspace, string stateDirectory, string reason);

    }
}
