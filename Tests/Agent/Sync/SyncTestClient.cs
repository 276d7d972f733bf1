using System.Security.Cryptography;
using System.Text;
using Google.Protobuf;
using Grpc.Core;
using Rbs.Agent.Sync;
using Rbs.V1;

namespace Rbs.Tests.Agent.Sync;

/// <summary>A client-side tree: manifest entries (sorted as the protocol requires) and the content of each digest.</summary>
internal sealed class LocalTree
{
    public List<ManifestEntry> Entries { get; } = [];

    public Dictionary<string, byte[]> Content { get; } = new(StringComparer.Ordinal);

    /// <summary>Builds the manifest of <paramref name="root"/> the way a client would (root bazel-* symlinks skipped).</summary>
    public static LocalTree Scan(string root)
    {
        var tree = new LocalTree();
        Scan(root, "", tree);
        tree.Sort();
        return tree;
    }

    /// <summary>A hand-made tree (for hostile manifests); file content is given as text.</summary>
    public static LocalTree Of(params ManifestEntry[] entries)
    {
        var tree = new LocalTree();
        tree.Entries.AddRange(entries);
        return tree;
    }

    public static ManifestEntry File(LocalTree tree, string path, byte[] content, bool executable = false)
    {
        var digest = SHA256.HashData(content);
        tree.Content[Convert.ToHexStringLower(digest)] = content;
        return new ManifestEntry
        {
            Path = path,
            Kind = EntryKind.File,
            Digest = ByteString.CopyFrom(digest),
            Size = (ulong)content.Length,
            Executable = executable,
        };
    }

    public static ManifestEntry Symlink(string path, string target) => new() { Path = path, Kind = EntryKind.Symlink, SymlinkTarget = target };

    public static ManifestEntry Directory(string path) => new() { Path = path, Kind = EntryKind.Directory };

    public void Sort() => Entries.Sort((a, b) => Utf8Compare(a.Path, b.Path));

    public ulong TotalBytes => (ulong)Entries.Where(e => e.Kind == EntryKind.File).Sum(e => (long)e.Size);

    /// <summary>SHA-256 over each entry's length-delimited serialization, in order (sync.proto, SyncBegin.manifest_digest).</summary>
    public ByteString ManifestDigest()
    {
        using var buffer = new MemoryStream();
        foreach (var entry in Entries)
        {
            entry.WriteDelimitedTo(buffer);
        }

        return ByteString.CopyFrom(SHA256.HashData(buffer.ToArray()));
    }

    private static void Scan(string root, string relative, LocalTree tree)
    {
        var directory = relative.Length == 0 ? root : Path.Combine(root, relative);
        var children = System.IO.Directory.EnumerateFileSystemEntries(directory, "*", new EnumerationOptions { AttributesToSkip = 0 }).ToList();
        if (children.Count == 0 && relative.Length > 0)
        {
            tree.Entries.Add(Directory(relative));
        }

        foreach (var child in children)
        {
            var name = Path.GetFileName(child);
            var path = relative.Length == 0 ? name : relative + "/" + name;
            var entry = WorkspaceTree.Lstat(child)!.Value;
            switch (entry.Kind)
            {
                case EntryKind.Symlink when relative.Length == 0 && name.StartsWith("bazel-", StringComparison.Ordinal):
                    break;
                case EntryKind.Symlink:
                    tree.Entries.Add(Symlink(path, entry.SymlinkTarget));
                    break;
                case EntryKind.Directory:
                    Scan(root, path, tree);
                    break;
                default:
                    tree.Entries.Add(File(tree, path, System.IO.File.ReadAllBytes(child), entry.Executable));
                    break;
            }
        }
    }

    private static int Utf8Compare(string a, string b) =>
        Encoding.UTF8.GetBytes(a).AsSpan().SequenceCompareTo(Encoding.UTF8.GetBytes(b));
}

/// <summary>What one sync returned.</summary>
internal sealed class SyncOutcome
{
    public SyncDone? Done { get; set; }

    public List<string> Needed { get; } = [];

    public NeedEnd? NeedEnd { get; set; }
}

/// <summary>Knobs for driving the raw protocol, including ways to misbehave.</summary>
internal sealed class SyncScript
{
    public ByteString? BeginDigest { get; init; }

    public ulong? BeginEntryCount { get; init; }

    public ulong? BeginTotalBytes { get; init; }

    public int ChunkBytes { get; init; } = 64 * 1024;

    /// <summary>Replaces a needed blob's bytes before sending (same length): a client lying about content.</summary>
    public Func<string, byte[], byte[]>? Tamper { get; init; }

    /// <summary>Cancels the call after this many blob chunks were sent.</summary>
    public int? CancelAfterChunks { get; init; }

    /// <summary>Runs after <see cref="CancelAfterChunks"/> chunks were sent, before the call is cancelled.</summary>
    public Func<Task>? BeforeCancel { get; init; }

    /// <summary>Sends the chunks in <c>blobs</c> frames of up to this many chunks (needs manifest_wanted.blob_batches).</summary>
    public int? BatchChunks { get; init; }

    /// <summary>Changes each batch before it is sent (with its index): a client sending a hostile batch.</summary>
    public Func<int, BlobBatch, BlobBatch>? MangleBatch { get; init; }

    /// <summary>Runs once the agent has answered need_end (before any blob is sent).</summary>
    public Func<Task>? OnNeedEnd { get; init; }
}

/// <summary>A minimal raw rbs.v1.WorkspaceSync client (the real one is jbazel's).</summary>
internal static class SyncTestClient
{
    public static async Task<SyncOutcome> SyncAsync(WorkspaceSync.WorkspaceSyncClient client, LocalTree tree, SyncScript? script = null, CancellationToken cancellationToken = default)
    {
        script ??= new SyncScript();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        cts.CancelAfter(TimeSpan.FromSeconds(60));
        var ct = cts.Token;
        using var call = client.Sync(cancellationToken: ct);
        try
        {
            return await RunAsync(call, tree, script, cts, ct);
        }
        catch (Exception ex) when (ex is RpcException or InvalidOperationException or IOException && !cts.IsCancellationRequested)
        {
            // The agent may end the call with its verdict while we are still writing (e.g. it refused the manifest's
            // first batch); the write then fails with a transport error. The response's status is the real answer.
            while (await call.ResponseStream.MoveNext(CancellationToken.None))
            {
            }

            throw;
        }
    }

    private static async Task<SyncOutcome> RunAsync(
        AsyncDuplexStreamingCall<SyncClientFrame, SyncServerFrame> call,
        LocalTree tree,
        SyncScript script,
        CancellationTokenSource cts,
        CancellationToken ct)
    {
        var outcome = new SyncOutcome();
        await call.RequestStream.WriteAsync(new SyncClientFrame
        {
            Begin = new SyncBegin
            {
                ManifestDigest = script.BeginDigest ?? tree.ManifestDigest(),
                EntryCount = script.BeginEntryCount ?? (ulong)tree.Entries.Count,
                TotalBytes = script.BeginTotalBytes ?? tree.TotalBytes,
            },
        }, ct);

        var first = await NextAsync(call, ct);
        if (first.FrameCase == SyncServerFrame.FrameOneofCase.Done)
        {
            outcome.Done = first.Done;
            await call.RequestStream.CompleteAsync();
            return outcome;
        }

        Assert.Equal(SyncServerFrame.FrameOneofCase.ManifestWanted, first.FrameCase);
        foreach (var batch in tree.Entries.Chunk(100))
        {
            var frame = new ManifestBatch();
            frame.Entries.AddRange(batch);
            await call.RequestStream.WriteAsync(new SyncClientFrame { Manifest = frame }, ct);
        }

        await call.RequestStream.WriteAsync(new SyncClientFrame { ManifestEnd = new ManifestEnd() }, ct);
        while (true)
        {
            var frame = await NextAsync(call, ct);
            if (frame.FrameCase == SyncServerFrame.FrameOneofCase.NeedEnd)
            {
                outcome.NeedEnd = frame.NeedEnd;
                break;
            }

            Assert.Equal(SyncServerFrame.FrameOneofCase.Need, frame.FrameCase);
            outcome.Needed.AddRange(frame.Need.Digests.Select(d => Convert.ToHexStringLower(d.Span)));
        }

        if (script.OnNeedEnd is { } onNeedEnd)
        {
            await onNeedEnd();
        }

        if (script.BatchChunks is { } perBatch)
        {
            Assert.True(first.ManifestWanted.BlobBatches, "the agent accepts blobs frames");
            var all = new List<BlobChunk>();
            foreach (var digest in outcome.Needed)
            {
                var content = tree.Content[digest];
                content = script.Tamper?.Invoke(digest, content) ?? content;
                for (var offset = 0; offset < content.Length; offset += script.ChunkBytes)
                {
                    all.Add(new BlobChunk
                    {
                        Digest = ByteString.CopyFrom(Convert.FromHexString(digest)),
                        Offset = (ulong)offset,
                        Data = ByteString.CopyFrom(content, offset, Math.Min(script.ChunkBytes, content.Length - offset)),
                    });
                }
            }

            var index = 0;
            foreach (var group in all.Chunk(perBatch))
            {
                var batch = new BlobBatch();
                batch.Chunks.AddRange(group);
                batch = script.MangleBatch?.Invoke(index++, batch) ?? batch;
                await call.RequestStream.WriteAsync(new SyncClientFrame { Blobs = batch }, ct);
            }
        }

        var chunks = 0;
        foreach (var digest in script.BatchChunks is null ? outcome.Needed : [])
        {
            var content = tree.Content[digest];
            content = script.Tamper?.Invoke(digest, content) ?? content;
            for (var offset = 0; offset < content.Length; offset += script.ChunkBytes)
            {
                var length = Math.Min(script.ChunkBytes, content.Length - offset);
                await call.RequestStream.WriteAsync(new SyncClientFrame
                {
                    Blob = new BlobChunk
                    {
                        Digest = ByteString.CopyFrom(Convert.FromHexString(digest)),
                        Offset = (ulong)offset,
                        Data = ByteString.CopyFrom(content, offset, length),
                    },
                }, ct);
                if (++chunks == script.CancelAfterChunks)
                {
                    if (script.BeforeCancel is { } beforeCancel)
                    {
                        await beforeCancel();
                    }

                    await cts.CancelAsync();
                    ct.ThrowIfCancellationRequested();
                }
            }
        }

        await call.RequestStream.WriteAsync(new SyncClientFrame { UploadEnd = new UploadEnd() }, ct);
        var done = await NextAsync(call, ct);
        Assert.Equal(SyncServerFrame.FrameOneofCase.Done, done.FrameCase);
        outcome.Done = done.Done;
        await call.RequestStream.CompleteAsync();
        return outcome;
    }

    private static async Task<SyncServerFrame> NextAsync(AsyncDuplexStreamingCall<SyncClientFrame, SyncServerFrame> call, CancellationToken ct)
    {
        if (!await call.ResponseStream.MoveNext(ct))
        {
            throw new InvalidOperationException("the agent ended the sync stream without a status");
        }

        return call.ResponseStream.Current;
    }
}
