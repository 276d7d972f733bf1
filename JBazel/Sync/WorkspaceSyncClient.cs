using System.Diagnostics;
using System.Security.Cryptography;
using System.Threading.Channels;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Win32.SafeHandles;
using Rbs.JBazel.Remote;
using Rbs.Shared.Text;
using Rbs.V1;

namespace Rbs.JBazel.Sync;

/// <summary>What one sync did, for the status line and tests.</summary>
internal sealed record SyncReport(int Entries, bool UpToDate, int BlobsUploaded, long BytesUploaded, long ElapsedMilliseconds, int Attempts, SyncDone Done, byte[] ManifestDigest)
{
    /// <summary>The <c>--rbs_status</c> line.</summary>
    public string StatusLine => UpToDate
        ? $"rbs: workspace up to date ({EntriesText}) in {ElapsedMilliseconds} ms"
        : $"rbs: synced {EntriesText} ({BlobsUploaded} {(BlobsUploaded == 1 ? "file" : "files")} uploaded, {ByteSize.Format(BytesUploaded, fraction: "0.0")}) in {ElapsedMilliseconds} ms";

    private string EntriesText => Entries == 1 ? "1 entry" : $"{Entries} entries";
}

/// <summary>
/// The client side of rbs.v1.WorkspaceSync: makes the agent's workspace an exact copy of this one. Blobs
/// are re-hashed while they are uploaded; a file that changed since it was digested cancels the call (the
/// agent keeps its old tree) and the whole sync runs once more.
/// </summary>
internal sealed class WorkspaceSyncClient(
    WorkspaceSync.WorkspaceSyncClient client,
    Metadata headers,
    Func<CancellationToken, Manifest> buildManifest,
    string agentDescription,
    Action<string> warn)
{
    public const int ChunkSize = 1024 * 1024;
    public const int MaxBatchEntries = 2000;
    public const int MaxBatchBytes = 1024 * 1024;

    /// <summary>A <c>blobs</c> frame is sent once its data reaches this (so it stays under 2 MiB: below 4 MiB, gRPC's limit).</summary>
    public const int MaxBlobBatchBytes = 1024 * 1024;

    /// <summary>Frames read ahead of the one being sent (bounds the reader's memory to a few MiB).</summary>
    public const int BlobBatchesInFlight = 4;

    /// <summary>
    /// Sync calls in all while the network or an intermediary fails them (a gateway replica restarting or draining, a
    /// proxy's 502): a sync is idempotent, so it is simply sent again, with GetServer's waits (<see cref="RemoteFailure.RetryDelay"/>).
    /// </summary>
    internal const int MaxTransientAttempts = RemoteFailure.MaxRetriedCalls;

    public async Task<SyncReport> SyncAsync(CancellationToken cancellationToken)
    {
        var stopwatch = Stopwatch.StartNew();
        var transientFailures = 0;
        // attempt counts passes over the tree (a tree that changed while syncing gets a second one); a call the network
        // failed is sent again within the same pass.
        for (var attempt = 1; ; )
        {
            try
            {
                var manifest = await Task.Run(() => buildManifest(cancellationToken), cancellationToken);
                if (attempt == 1 && transientFailures == 0)
                {
                    foreach (var warning in manifest.Warnings)
                    {
                        warn($"rbs: warning: {warning}");
                    }
                }

                var (done, blobs, bytes) = await SyncOnceAsync(manifest, cancellationToken);
                return new SyncReport(manifest.Entries.Count, done.UpToDate, blobs, bytes, stopwatch.ElapsedMilliseconds, attempt, done, manifest.Digest);
            }
            catch (TransientSyncFailure) when (++transientFailures < MaxTransientAttempts)
            {
                // Silent, as bazel would be: the next call goes through another replica, or the same once it is back.
                await Task.Delay(RemoteFailure.RetryDelay(transientFailures), cancellationToken);
            }
            catch (TransientSyncFailure ex)
            {
                throw ex.Failure;
            }
            catch (WorkspaceChangedException ex) when (attempt == 1)
            {
                attempt++;
                warn($"rbs: {ex.Message} during the workspace sync; syncing again.");
            }
            catch (WorkspaceChangedException ex)
            {
                throw new RemoteFailure(ExitCodes.TransientRemoteError,
                    $"workspace sync to {agentDescription} gave up: {ex.Message}, twice. Run the command again once it stops changing, " +
                    $"or leave it out with --rbs_sync_exclude=/{ex.Path}.");
            }
        }
    }

    private async Task<(SyncDone Done, int Blobs, long Bytes)> SyncOnceAsync(Manifest manifest, CancellationToken cancellationToken)
    {
        using var abort = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        using var call = client.Sync(headers, cancellationToken: abort.Token);
        var phase = "starting";
        try
        {
            await WriteAsync(call, new SyncClientFrame
            {
                Begin = new SyncBegin
                {
                    ManifestDigest = ByteString.CopyFrom(manifest.Digest),
                    EntryCount = (ulong)manifest.Entries.Count,
                    TotalBytes = manifest.TotalBytes,
                },
            }, abort.Token);

            var first = await ReadAsync(call, abort.Token);
            if (first.FrameCase == SyncServerFrame.FrameOneofCase.Done && first.Done.UpToDate)
            {
                await call.RequestStream.CompleteAsync();
                return (first.Done, 0, 0);
            }

            Expect(first, SyncServerFrame.FrameOneofCase.ManifestWanted);

            phase = $"sending the manifest ({manifest.Entries.Count} entries)";
            await SendManifestAsync(call, manifest, abort.Token);

            phase = "waiting for the list of missing files";
            var needed = new List<ByteString>();
            while (true)
            {
                var frame = await ReadAsync(call, abort.Token);
                if (frame.FrameCase == SyncServerFrame.FrameOneofCase.NeedEnd)
                {
                    break;
                }

                Expect(frame, SyncServerFrame.FrameOneofCase.Need);
                needed.AddRange(frame.Need.Digests);
            }

            phase = $"uploading {needed.Count} {(needed.Count == 1 ? "file" : "files")}";
            var sources = new List<(ByteString Digest, BlobSource Source)>(needed.Count);
            foreach (var digest in needed)
            {
                if (!manifest.Blobs.TryGetValue(digest, out var source))
                {
                    throw new RemoteFailure(ExitCodes.RemoteEnvironmentError,
                        $"{agentDescription} asked for content that is not in the manifest ({Convert.ToHexStringLower(digest.Span)}) during the workspace sync. Is it a compatible agent?");
                }

                sources.Add((digest, source));
            }

            long bytes;
            try
            {
                bytes = first.ManifestWanted.BlobBatches
                    ? await UploadBatchedAsync(call, sources, abort.Token)
                    : await UploadOneByOneAsync(call, sources, abort.Token);
            }
            catch (WorkspaceChangedException)
            {
                // Dropping the call before upload_end: the agent discards everything and keeps its old tree.
                await abort.CancelAsync();
                throw;
            }

            await WriteAsync(call, new SyncClientFrame { UploadEnd = new UploadEnd() }, abort.Token);
            await call.RequestStream.CompleteAsync();

            phase = "waiting for the agent to apply the new tree";
            var last = await ReadAsync(call, abort.Token);
            Expect(last, SyncServerFrame.FrameOneofCase.Done);
            return (last.Done, needed.Count, bytes);
        }
        catch (RpcException) when (cancellationToken.IsCancellationRequested)
        {
            throw new OperationCanceledException(cancellationToken);
        }
        catch (RpcException ex)
        {
            var failure = Failure(ex, phase);
            throw failure.ExitCode == ExitCodes.TransientRemoteError ? new TransientSyncFailure(failure) : failure;
        }
    }

    /// <summary>A sync call the network or an intermediary failed: sent again (<see cref="MaxTransientAttempts"/>), then <see cref="Failure"/>.</summary>
    private sealed class TransientSyncFailure(RemoteFailure failure) : Exception(failure.Message, failure)
    {
        public RemoteFailure Failure => failure;
    }

    private static async Task SendManifestAsync(AsyncDuplexStreamingCall<SyncClientFrame, SyncServerFrame> call, Manifest manifest, CancellationToken cancellationToken)
    {
        var batch = new ManifestBatch();
        var batchBytes = 0;
        foreach (var entry in manifest.Entries)
        {
            var size = entry.CalculateSize();
            if (batch.Entries.Count > 0 && (batch.Entries.Count >= MaxBatchEntries || batchBytes + size > MaxBatchBytes))
            {
                await WriteAsync(call, new SyncClientFrame { Manifest = batch }, cancellationToken);
                batch = new ManifestBatch();
                batchBytes = 0;
            }

            batch.Entries.Add(entry);
            batchBytes += size + 4;
        }

        if (batch.Entries.Count > 0)
        {
            await WriteAsync(call, new SyncClientFrame { Manifest = batch }, cancellationToken);
        }

        await WriteAsync(call, new SyncClientFrame { ManifestEnd = new ManifestEnd() }, cancellationToken);
    }

    /// <summary>An agent without <c>blob_batches</c>: one frame per chunk, each blob read and sent in turn.</summary>
    private static async Task<long> UploadOneByOneAsync(
        AsyncDuplexStreamingCall<SyncClientFrame, SyncServerFrame> call,
        List<(ByteString Digest, BlobSource Source)> sources,
        CancellationToken cancellationToken)
    {
        long bytes = 0;
        foreach (var (digest, source) in sources)
        {
            bytes += await UploadAsync(call, digest, source, cancellationToken);
        }

        return bytes;
    }

    /// <summary>
    /// Blobs packed into <c>blobs</c> frames of about <see cref="MaxBlobBatchBytes"/>: a reader task reads and re-hashes
    /// the files while the frames before are being sent (at most <see cref="BlobBatchesInFlight"/> frames ahead), so
    /// 10k small files are a few hundred messages instead of 10k, and reading overlaps the upload.
    /// </summary>
    private static async Task<long> UploadBatchedAsync(
        AsyncDuplexStreamingCall<SyncClientFrame, SyncServerFrame> call,
        List<(ByteString Digest, BlobSource Source)> sources,
        CancellationToken cancellationToken)
    {
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var frames = Channel.CreateBounded<SyncClientFrame>(new BoundedChannelOptions(BlobBatchesInFlight) { SingleReader = true, SingleWriter = true });
        var reader = Task.Run(() => ReadBatchesAsync(frames.Writer, sources, stop.Token), stop.Token);
        try
        {
            await foreach (var frame in frames.Reader.ReadAllAsync(stop.Token))
            {
                await WriteAsync(call, frame, stop.Token);
            }
        }
        catch (Exception)
        {
            // The send failed (or the reader did): stop the reader; its own failure wins, else the send's.
            await stop.CancelAsync();
            try
            {
                await reader;
            }
            catch (OperationCanceledException)
            {
            }

            throw;
        }

        // The reader's own failure (a changed or vanished file) surfaces here; ReadAllAsync rethrows it too.
        return await reader;
    }

    private static async Task<long> ReadBatchesAsync(
        ChannelWriter<SyncClientFrame> frames,
        List<(ByteString Digest, BlobSource Source)> sources,
        CancellationToken cancellationToken)
    {
        try
        {
            long total = 0;
            var batch = new BlobBatch();
            var batchBytes = 0;
            using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            foreach (var (digest, source) in sources)
            {
                cancellationToken.ThrowIfCancellationRequested();
                using var file = OpenBlob(source);
                long offset = 0;
                while (true)
                {
                    // Each chunk reads into its own array that the frame then owns (no copy into the message). The last
                    // chunk's array has one byte more than remains: a regular file's read returns less than asked only
                    // at its end, so a short read is the end (no extra read to see 0), and a full one means it grew.
                    var remaining = source.Size - offset;
                    var last = remaining < ChunkSize;
                    var buffer = new byte[last ? remaining + 1 : ChunkSize];
                    var read = ReadFull(file, buffer, offset, last ? (int)remaining : buffer.Length);
                    if (read > remaining)
                    {
                        // Grew past its digested size.
                        throw new WorkspaceChangedException(source.Path, "changed");
                    }

                    if (read == 0)
                    {
                        break;
                    }

                    hash.AppendData(buffer, 0, read);
                    batch.Chunks.Add(new BlobChunk
                    {
                        Digest = digest,
                        Offset = (ulong)offset,
                        Data = UnsafeByteOperations.UnsafeWrap(buffer.AsMemory(0, read)),
                    });
                    batchBytes += read;
                    offset += read;
                    if (batchBytes >= MaxBlobBatchBytes)
                    {
                        await frames.WriteAsync(new SyncClientFrame { Blobs = batch }, cancellationToken);
                        batch = new BlobBatch();
                        batchBytes = 0;
                    }

                    if (last || read < buffer.Length)
                    {
                        break;
                    }
                }

                if (offset != source.Size || !hash.GetHashAndReset().AsSpan().SequenceEqual(digest.Span))
                {
                    throw new WorkspaceChangedException(source.Path, "changed");
                }

                total += offset;
            }

            if (batch.Chunks.Count > 0)
            {
                await frames.WriteAsync(new SyncClientFrame { Blobs = batch }, cancellationToken);
            }

            frames.Complete();
            return total;
        }
        catch (Exception ex)
        {
            frames.TryComplete(ex);
            throw;
        }
    }

    private static SafeFileHandle OpenBlob(BlobSource source)
    {
        try
        {
            return File.OpenHandle(source.FullPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        }
        catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new WorkspaceChangedException(source.Path, "was deleted");
        }
    }

    /// <summary>
    /// Reads at <paramref name="offset"/> until the buffer is full, the file ends, or (once at least
    /// <paramref name="enough"/> bytes are in) a read comes back short: for a regular file that is its end.
    /// </summary>
    private static int ReadFull(SafeFileHandle file, byte[] buffer, long offset, int enough)
    {
        var total = 0;
        while (total < buffer.Length)
        {
            var want = buffer.Length - total;
            var read = RandomAccess.Read(file, buffer.AsSpan(total), offset + total);
            if (read == 0)
            {
                break;
            }

            total += read;
            if (read < want && total >= enough)
            {
                break;
            }
        }

        return total;
    }

    /// <summary>Streams one blob in chunks of at most 1 MiB, checking that the file still has the digested content.</summary>
    private static async Task<long> UploadAsync(
        AsyncDuplexStreamingCall<SyncClientFrame, SyncServerFrame> call,
        ByteString digest,
        BlobSource source,
        CancellationToken cancellationToken)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        FileStream stream;
        try
        {
            stream = new FileStream(source.FullPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, bufferSize: 0, useAsync: false);
        }
        catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new WorkspaceChangedException(source.Path, "was deleted");
        }

        await using (stream)
        {
            var buffer = new byte[(int)Math.Min(ChunkSize, Math.Max(source.Size, 1))];
            long offset = 0;
            while (true)
            {
                var read = await ReadFullAsync(stream, buffer, cancellationToken);
                if (read == 0)
                {
                    break;
                }

                if (offset + read > source.Size)
                {
                    throw new WorkspaceChangedException(source.Path, "changed");
                }

                hash.AppendData(buffer, 0, read);
                await WriteAsync(call, new SyncClientFrame
                {
                    Blob = new BlobChunk { Digest = digest, Offset = (ulong)offset, Data = ByteString.CopyFrom(buffer, 0, read) },
                }, cancellationToken);
                offset += read;
            }

            if (offset != source.Size || !hash.GetHashAndReset().AsSpan().SequenceEqual(digest.Span))
            {
                throw new WorkspaceChangedException(source.Path, "changed");
            }

            return offset;
        }
    }

    private static async Task<int> ReadFullAsync(FileStream stream, byte[] buffer, CancellationToken cancellationToken)
    {
        var total = 0;
        while (total < buffer.Length)
        {
            var read = await stream.ReadAsync(buffer.AsMemory(total), cancellationToken);
            if (read == 0)
            {
                break;
            }

            total += read;
        }

        return total;
    }

    private static async Task WriteAsync(AsyncDuplexStreamingCall<SyncClientFrame, SyncServerFrame> call, SyncClientFrame frame, CancellationToken cancellationToken)
    {
        try
        {
            await call.RequestStream.WriteAsync(frame, cancellationToken);
        }
        catch (Exception ex) when (ex is InvalidOperationException or IOException or RpcException && !cancellationToken.IsCancellationRequested)
        {
            // The agent ended the call (e.g. rejected the manifest): its status says why.
            await DrainAsync(call, cancellationToken);
            throw;
        }
    }

    private static async Task DrainAsync(AsyncDuplexStreamingCall<SyncClientFrame, SyncServerFrame> call, CancellationToken cancellationToken)
    {
        while (await call.ResponseStream.MoveNext(cancellationToken))
        {
        }

        if (call.GetStatus().StatusCode != StatusCode.OK)
        {
            throw new RpcException(call.GetStatus());
        }
    }

    private static async Task<SyncServerFrame> ReadAsync(AsyncDuplexStreamingCall<SyncClientFrame, SyncServerFrame> call, CancellationToken cancellationToken)
    {
        if (!await call.ResponseStream.MoveNext(cancellationToken))
        {
            throw new RpcException(new Status(StatusCode.Unavailable, "the agent ended the sync stream early"));
        }

        return call.ResponseStream.Current;
    }

    private void Expect(SyncServerFrame frame, SyncServerFrame.FrameOneofCase expected)
    {
        if (frame.FrameCase != expected)
        {
            throw new RemoteFailure(ExitCodes.RemoteEnvironmentError,
                $"{agentDescription} broke the workspace sync protocol: sent {frame.FrameCase} where {expected} was due. Is it a compatible agent?");
        }
    }

    private RemoteFailure Failure(RpcException ex, string phase)
    {
        var detail = RemoteFailure.Describe(ex).ReplaceLineEndings(" ");
        var what = $"workspace sync to {agentDescription} failed while {phase}";
        if (ex.Status.DebugException is null)
        {
            switch (ex.StatusCode)
            {
                case StatusCode.InvalidArgument or StatusCode.FailedPrecondition or StatusCode.ResourceExhausted:
                    // The agent refused this tree (unsafe path, case collision, over its limits): permanent.
                    return new RemoteFailure(ExitCodes.RemoteEnvironmentError, $"{what} ({ex.StatusCode}): {detail}");
                case StatusCode.Aborted:
                    return new RemoteFailure(ExitCodes.TransientRemoteError,
                        $"{what} (Aborted): {detail}. Another sync of this workspace is running; run the command again.");
                case StatusCode.Unimplemented:
                    return new RemoteFailure(ExitCodes.RemoteEnvironmentError,
                        $"{what}: the agent does not serve rbs.v1.WorkspaceSync ({detail}). Update the agent, or drop --rbs_sync.");
                default:
                    break;
            }
        }

        var exitCode = ExitCodes.ForRemoteStatus(ex);
        return new RemoteFailure(exitCode,
            exitCode == ExitCodes.TransientRemoteError
                ? $"{what} ({detail}). Run the command again (GetServer starts a new agent only if this one died)."
                : $"{what} ({ex.StatusCode}): {detail}");
    }
}
