using System.Buffers;
using System.Security.Cryptography;
using Google.Protobuf;
using Rbs.Shared.Sync;
using Rbs.V1;

namespace Rbs.JBazel.Sync;

/// <summary>A file's content as the manifest names it: where to read it and what it must hash to.</summary>
internal sealed record BlobSource(string Path, string FullPath, long Size);

/// <summary>The workspace as one sync sends it.</summary>
/// <param name="Entries">Sorted by path, ordinal on UTF-8 bytes.</param>
/// <param name="Digest">sync.proto's manifest digest (<see cref="ManifestDigest"/>).</param>
/// <param name="TotalBytes">Sum of the file sizes.</param>
/// <param name="Blobs">One readable source per distinct file digest.</param>
/// <param name="Warnings">Skipped symlinks and special files.</param>
/// <param name="FilesHashed">Files whose digest was computed in this walk (cache misses).</param>
/// <param name="CacheHits">Files whose digest came from the cache.</param>
internal sealed record Manifest(
    IReadOnlyList<ManifestEntry> Entries,
    byte[] Digest,
    ulong TotalBytes,
    IReadOnlyDictionary<ByteString, BlobSource> Blobs,
    IReadOnlyList<string> Warnings,
    int FilesHashed,
    int CacheHits);

/// <summary>A file changed between being digested and being uploaded: the sync is started over.</summary>
internal sealed class WorkspaceChangedException(string path, string what) : Exception($"{path} {what}")
{
    public string Path { get; } = path;
}

/// <summary>Walks the workspace and digests its files (cached, cache misses hashed in parallel).</summary>
internal sealed class ClientManifestBuilder(string root, WalkOptions options, string? cacheFile, TimeProvider time)
{
    public const int HashBufferSize = 128 * 1024;

    public Manifest Build(CancellationToken cancellationToken)
    {
        var walk = WorkspaceWalker.Walk(root, options, cancellationToken);
        var cache = DigestCache.Load(cacheFile);
        var digests = new byte[walk.Entries.Count][];
        var misses = new List<int>();
        for (var i = 0; i < walk.Entries.Count; i++)
        {
            var entry = walk.Entries[i];
            if (entry.Kind != FileKind.File)
            {
                continue;
            }

            if (cache.TryGet(entry.Path, entry.Stat, out var digest))
            {
                digests[i] = digest;
            }
            else
            {
                misses.Add(i);
            }
        }

        var sizes = new long[walk.Entries.Count];
        var hashedHere = new bool[walk.Entries.Count];
        foreach (var i in misses)
        {
            hashedHere[i] = true;
        }

        var fresh = new (FileStat Stat, long HashedAt)?[walk.Entries.Count];
        try
        {
            HashMisses(walk, misses, digests, sizes, fresh, cancellationToken);
        }
        catch (AggregateException ex) when (ex.InnerExceptions.Count > 0)
        {
            // Parallel.ForEach wraps: surface the first real reason (a changed file, an unreadable one, Ctrl-C).
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(ex.InnerExceptions[0]);
        }

        var manifestEntries = new List<ManifestEntry>(walk.Entries.Count);
        var blobs = new Dictionary<ByteString, BlobSource>();
        ulong totalBytes = 0;
        for (var i = 0; i < walk.Entries.Count; i++)
        {
            var entry = walk.Entries[i];
            switch (entry.Kind)
            {
                case FileKind.File:
                    var size = hashedHere[i] ? sizes[i] : entry.Stat.Size;
                    if (fresh[i] is { } hashed)
                    {
                        cache.Put(entry.Path, hashed.Stat, hashed.HashedAt, digests[i]);
                    }

                    var digest = ByteString.CopyFrom(digests[i]);
                    manifestEntries.Add(new ManifestEntry
                    {
                        Path = entry.Path,
                        Kind = EntryKind.File,
                        Digest = digest,
                        Size = (ulong)size,
                        Executable = (fresh[i]?.Stat ?? entry.Stat).Executable,
                    });
                    totalBytes += (ulong)size;
                    blobs.TryAdd(digest, new BlobSource(entry.Path, entry.FullPath, size));
                    break;
                case FileKind.Directory:
                    manifestEntries.Add(new ManifestEntry { Path = entry.Path, Kind = EntryKind.Directory });
                    break;
                case FileKind.Symlink:
                    manifestEntries.Add(new ManifestEntry { Path = entry.Path, Kind = EntryKind.Symlink, SymlinkTarget = entry.SymlinkTarget });
                    break;
                default:
                    break;
            }
        }

        manifestEntries.Sort((a, b) => Utf8Ordinal.Instance.Compare(a.Path, b.Path));
        cache.Save();
        return new Manifest(
            manifestEntries,
            ManifestDigest.Compute(manifestEntries),
            totalBytes,
            blobs,
            walk.Warnings,
            misses.Count,
            walk.Entries.Count(e => e.Kind == FileKind.File) - misses.Count);
    }

    private void HashMisses(WalkResult walk, List<int> misses, byte[][] digests, long[] sizes, (FileStat Stat, long HashedAt)?[] fresh, CancellationToken cancellationToken) =>
        Parallel.ForEach(
            misses,
            new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount, CancellationToken = cancellationToken },
            i =>
            {
                var entry = walk.Entries[i];
                var (digest, size, stat, hashedAt) = HashStable(entry, cancellationToken);
                digests[i] = digest;
                sizes[i] = size;
                fresh[i] = stat is { } stable ? (stable, hashedAt) : null;
            });

    /// <summary>
    /// Hashes a file whose stat does not change while it is read. A file that keeps changing is hashed as
    /// read and not cached; the upload's re-hash catches it if it changes again.
    /// </summary>
    private (byte[] Digest, long Size, FileStat? Stat, long HashedAt) HashStable(WalkedEntry entry, CancellationToken cancellationToken)
    {
        for (var attempt = 0; ; attempt++)
        {
            var before = FileStats.Get(entry.FullPath, follow: true);
            var hashedAt = NowNanoseconds();
            byte[] digest;
            long size;
            try
            {
                (digest, size) = HashFile(entry.FullPath, cancellationToken);
            }
            catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException)
            {
                throw new WorkspaceChangedException(entry.Path, "was deleted while the workspace was read");
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                throw new Remote.RemoteFailure(ExitCodes.LocalEnvironmentError,
                    $"cannot read {entry.Path} for the workspace sync ({ex.Message}). Make it readable, or leave it out with --rbs_sync_exclude=/{entry.Path}.");
            }

            var after = FileStats.Get(entry.FullPath, follow: true);
            if (before == after && after.Size == size)
            {
                return (digest, size, after, hashedAt);
            }

            if (attempt == 2)
            {
                return (digest, size, null, hashedAt);
            }
        }
    }

    private long NowNanoseconds() => (time.GetUtcNow().UtcTicks - DateTime.UnixEpoch.Ticks) * 100;

    /// <summary>SHA-256 and length of a file, streamed through one pooled buffer.</summary>
    internal static (byte[] Digest, long Size) HashFile(string path, CancellationToken cancellationToken)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(HashBufferSize);
        try
        {
            using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            // A bare handle and positioned reads: open, fstat, read, close for a small file, nothing more.
            using var file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            long size = 0;
            while (true)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var read = RandomAccess.Read(file, buffer.AsSpan(0, HashBufferSize), size);
                hash.AppendData(buffer, 0, read);
                size += read;
                // A regular file's read returns less than asked only at its end: no second read to see 0. (A file that
                // grows meanwhile is caught by HashStable: its stat after the read no longer matches.)
                if (read < HashBufferSize)
                {
                    break;
                }
            }

            return (hash.GetHashAndReset(), size);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
