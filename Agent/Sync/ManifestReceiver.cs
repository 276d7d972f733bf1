using System.Security.Cryptography;
using Google.Protobuf;
using Grpc.Core;
using Rbs.Shared.Sync;
using Rbs.Shared.Text;
using Rbs.V1;

namespace Rbs.Agent.Sync;

/// <summary>
/// Receives manifest batches: checks order, limits and each path as entries arrive (so a hostile manifest is refused
/// before it is held in memory), recomputes the manifest digest, then validates the tree's structure.
/// </summary>
internal sealed class ManifestReceiver : IDisposable
{
    public static readonly string EmptyDigest = Convert.ToHexStringLower(SHA256.HashData([]));

    private readonly ManifestDigest _digest = new();
    private readonly WorkspaceSyncOptions _limits;
    private readonly SyncBegin _begin;
    private readonly List<TreeEntry> _entries = [];
    private readonly Dictionary<string, long> _sizeByDigest = new(StringComparer.Ordinal);
    private long _totalBytes;

    public ManifestReceiver(WorkspaceSyncOptions limits, SyncBegin begin)
    {
        _limits = limits;
        _begin = begin;
        CheckBegin(limits, begin);
    }

    /// <summary>Refuses a sync whose announced size is over the limits before asking for the manifest.</summary>
    public static void CheckBegin(WorkspaceSyncOptions limits, SyncBegin begin)
    {
        if (begin.ManifestDigest.Length != ManifestDigest.Length)
        {
            throw SyncPaths.Invalid($"begin.manifest_digest must be a {ManifestDigest.Length}-byte SHA-256, got {begin.ManifestDigest.Length} bytes.");
        }

        if (begin.EntryCount > (ulong)limits.MaxEntries)
        {
            throw TooManyEntries(limits, begin.EntryCount);
        }

        if (begin.TotalBytes > (ulong)limits.MaxTotalBytes)
        {
            throw TooLarge(limits, (long)Math.Min(begin.TotalBytes, long.MaxValue));
        }
    }

    public void Add(ManifestEntry entry)
    {
        if (_entries.Count >= _limits.MaxEntries)
        {
            throw TooManyEntries(_limits, (ulong)_entries.Count + 1);
        }

        SyncPaths.ValidatePath(entry.Path);
        if (_entries.Count > 0)
        {
            var order = Utf8Ordinal.Instance.Compare(_entries[^1].Path, entry.Path);
            if (order == 0)
            {
                throw SyncPaths.Invalid($"path '{SyncPaths.Shown(entry.Path)}' is listed twice in the manifest.");
            }

            if (order > 0)
            {
                throw SyncPaths.Invalid(
                    $"manifest entries must be sorted by path (ordinal on UTF-8 bytes): '{SyncPaths.Shown(entry.Path)}' came after '{SyncPaths.Shown(_entries[^1].Path)}'.");
            }
        }

        // The digest covers the entries exactly as sent, so the client's and agent's views cannot silently differ.
        _digest.Append(entry);

        _entries.Add(entry.Kind switch
        {
            EntryKind.File => FileEntry(entry),
            EntryKind.Directory => new TreeEntry { Path = entry.Path, Kind = EntryKind.Directory },
            EntryKind.Symlink => new TreeEntry { Path = entry.Path, Kind = EntryKind.Symlink, SymlinkTarget = entry.SymlinkTarget },
            _ => throw SyncPaths.Invalid($"entry '{SyncPaths.Shown(entry.Path)}' has kind {entry.Kind}; expected FILE, DIRECTORY or SYMLINK."),
        });
    }

    /// <summary>Checks the digest and counts announced in begin, then the tree's structure.</summary>
    public SyncManifest Finish(bool caseInsensitive)
    {
        var digest = _digest.Finish();
        if (!digest.AsSpan().SequenceEqual(_begin.ManifestDigest.Span))
        {
            throw SyncPaths.Invalid(
                $"manifest digest mismatch: begin said {Convert.ToHexStringLower(_begin.ManifestDigest.Span)}, the entries sent hash to " +
                $"{Convert.ToHexStringLower(digest)} (SHA-256 over each entry's length-delimited serialization, in order).");
        }

        if (_begin.EntryCount != (ulong)_entries.Count || _begin.TotalBytes != (ulong)_totalBytes)
        {
            throw SyncPaths.Invalid(
                $"begin announced {_begin.EntryCount} entries and {_begin.TotalBytes} bytes, the manifest has {_entries.Count} entries and {_totalBytes} bytes.");
        }

        var byPath = new Dictionary<string, TreeEntry>(_entries.Count, StringComparer.Ordinal);
        foreach (var entry in _entries)
        {
            byPath.Add(entry.Path, entry);
        }

        var implied = new List<TreeEntry>();
        var symlinks = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var entry in _entries)
        {
            if (entry.Kind == EntryKind.Symlink)
            {
                symlinks.Add(entry.Path, entry.SymlinkTarget);
            }

            for (var slash = entry.Path.IndexOf('/', StringComparison.Ordinal); slash >= 0; slash = entry.Path.IndexOf('/', slash + 1))
            {
                var parent = entry.Path[..slash];
                if (byPath.TryGetValue(parent, out var existing))
                {
                    if (existing.Kind != EntryKind.Directory)
                    {
                        throw SyncPaths.Invalid(
                            $"path '{SyncPaths.Shown(entry.Path)}' is inside '{SyncPaths.Shown(parent)}', which the manifest lists as a {KindName(existing.Kind)}; " +
                            "entries must not pass through files or symlinks.");
                    }
                }
                else
                {
                    var directory = new TreeEntry { Path = parent, Kind = EntryKind.Directory, Implied = true };
                    byPath.Add(parent, directory);
                    implied.Add(directory);
                }
            }
        }

        foreach (var (path, target) in symlinks)
        {
            SyncPaths.ValidateSymlink(path, target, symlinks);
        }

        if (caseInsensitive)
        {
            var folded = new Dictionary<string, string>(byPath.Count, StringComparer.OrdinalIgnoreCase);
            foreach (var path in byPath.Keys)
            {
                if (!folded.TryAdd(path, path))
                {
                    var (a, b) = Utf8Ordinal.Instance.Compare(folded[path], path) < 0 ? (folded[path], path) : (path, folded[path]);
                    throw new RpcException(new Status(StatusCode.FailedPrecondition,
                        $"'{SyncPaths.Shown(a)}' and '{SyncPaths.Shown(b)}' differ only in case; this agent's workspace is case-insensitive, so they would be the same file. " +
                        "Rename one of them."));
                }
            }
        }

        var all = new List<TreeEntry>(_entries.Count + implied.Count);
        all.AddRange(_entries);
        all.AddRange(implied);
        all.Sort((x, y) => Utf8Ordinal.Instance.Compare(x.Path, y.Path));
        return new SyncManifest
        {
            Digest = Convert.ToHexStringLower(digest),
            Entries = all,
            ByPath = byPath,
            ListedCount = _entries.Count,
            TotalBytes = _totalBytes,
        };
    }

    public void Dispose() => _digest.Dispose();

    private TreeEntry FileEntry(ManifestEntry entry)
    {
        if (entry.Digest.Length != SHA256.HashSizeInBytes)
        {
            throw SyncPaths.Invalid($"file '{SyncPaths.Shown(entry.Path)}' has a {entry.Digest.Length}-byte digest; expected a {SHA256.HashSizeInBytes}-byte SHA-256.");
        }

        if (entry.Size > (ulong)_limits.MaxFileBytes)
        {
            throw new RpcException(new Status(StatusCode.ResourceExhausted,
                $"file {entry.Path} is {ByteSize.Format((long)Math.Min(entry.Size, long.MaxValue), bytesUnit: "bytes")}; this agent accepts at most " +
                $"{ByteSize.Format(_limits.MaxFileBytes, bytesUnit: "bytes")} per file (--sync-max-file-bytes)."));
        }

        var size = (long)entry.Size;
        var digest = Convert.ToHexStringLower(entry.Digest.Span);
        if (size == 0 && digest != EmptyDigest)
        {
            throw SyncPaths.Invalid($"file '{SyncPaths.Shown(entry.Path)}' is empty but its digest is {digest}, not the SHA-256 of no bytes ({EmptyDigest}).");
        }

        if (_sizeByDigest.TryGetValue(digest, out var known))
        {
            if (known != size)
            {
                throw SyncPaths.Invalid($"digest {digest} is listed with sizes {known} and {size} (file '{SyncPaths.Shown(entry.Path)}').");
            }
        }
        else
        {
            _sizeByDigest.Add(digest, size);
        }

        _totalBytes += size;
        if (_totalBytes > _limits.MaxTotalBytes)
        {
            throw TooLarge(_limits, _totalBytes);
        }

        return new TreeEntry { Path = entry.Path, Kind = EntryKind.File, Digest = digest, Size = size, Executable = entry.Executable };
    }

    private static RpcException TooManyEntries(WorkspaceSyncOptions limits, ulong count) =>
        new(new Status(StatusCode.ResourceExhausted,
            $"the workspace has {count} entries; this agent accepts at most {limits.MaxEntries} (--sync-max-entries)."));

    private static RpcException TooLarge(WorkspaceSyncOptions limits, long bytes) =>
        new(new Status(StatusCode.ResourceExhausted,
            $"the workspace's files add up to {ByteSize.Format(bytes, bytesUnit: "bytes")}; this agent accepts at most {ByteSize.Format(limits.MaxTotalBytes, bytesUnit: "bytes")} in total " +
            "(--sync-max-total-bytes)."));

    private static string KindName(EntryKind kind) => kind == EntryKind.Symlink ? "symlink" : "file";
}
