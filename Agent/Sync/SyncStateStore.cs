using System.Security.Cryptography;
using System.Text;
using Rbs.V1;

namespace Rbs.Agent.Sync;

/// <summary>A saved tree: the index of the applied tree, or the journal of one being applied.</summary>
internal sealed record SavedTree(string Digest, List<TreeEntry> Entries);

/// <summary>
/// The sync state directory: <c>index</c> (the tree last applied), <c>journal</c> (the tree being applied; present
/// only while an apply is unfinished) and <c>staging/</c> (verified blobs named by their hex SHA-256). Files are
/// replaced via write-to-temp + fsync + rename, so each is either the old or the new version after a crash.
/// </summary>
internal sealed class SyncStateStore(string directory)
{
    private const string Magic = "rbs-sync-tree-v1";

    // Shard directories known to exist, so each blob does not stat its shard (twice: when received, when placed).
    // Reset by EnsureCreated at the start of every sync and recovery, in case the directory was removed meanwhile.
    private readonly HashSet<string> _shards = new(StringComparer.Ordinal);

    public string Directory { get; } = directory;

    public string StagingDirectory => Path.Combine(Directory, "staging");

    private string IndexPath => Path.Combine(Directory, "index");

    private string JournalPath => Path.Combine(Directory, "journal");

    public void EnsureCreated()
    {
        // Private to the agent's user: staged blobs are the client's sources.
        const UnixFileMode privateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
        System.IO.Directory.CreateDirectory(Path.GetDirectoryName(Path.TrimEndingDirectorySeparator(Directory)) ?? "/");
        WorkspaceTree.MakeDirectory(Directory, privateMode);
        WorkspaceTree.MakeDirectory(StagingDirectory, privateMode);
        lock (_shards)
        {
            _shards.Clear();
        }
    }

    public SavedTree? LoadIndex() => Load(IndexPath);

    public SavedTree? LoadJournal() => Load(JournalPath);

    public bool HasJournal => File.Exists(JournalPath);

    /// <summary>
    /// Set when an apply could not be completed and its journal was dropped: the tree on disk is neither the old nor
    /// the new one until the next sync succeeds, so no command may run on it.
    /// </summary>
    public bool IsIncomplete => File.Exists(IncompletePath);

    public void MarkIncomplete() => File.WriteAllBytes(IncompletePath, []);

    public void ClearIncomplete() => File.Delete(IncompletePath);

    private string IncompletePath => Path.Combine(Directory, "incomplete");

    public void SaveIndex(SavedTree tree) => Save(IndexPath, tree);

    public void SaveJournal(SavedTree tree) => Save(JournalPath, tree);

    public void DeleteIndex() => File.Delete(IndexPath);

    public void DeleteJournal() => File.Delete(JournalPath);

    /// <summary>
    /// The staged blob file for a hex digest (it may not exist), in one of 256 shard directories: every create and
    /// rename looks its name up, and a flat directory of 10k blobs made that lookup the cost of a first sync (a
    /// linear scan on file systems without hashed directory indexes).
    /// </summary>
    public string StagedPath(string digest)
    {
        var shard = Path.Combine(StagingDirectory, digest[..2]);
        lock (_shards)
        {
            if (!_shards.Contains(shard))
            {
                if (!System.IO.Directory.Exists(shard))
                {
                    WorkspaceTree.MakeDirectory(shard, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
                }

                _shards.Add(shard);
            }
        }

        return Path.Combine(shard, digest);
    }

    /// <summary>Completely received, verified blobs.</summary>
    public HashSet<string> StagedDigests() =>
        StagedFiles()
            .Select(Path.GetFileName)
            .Where(name => name is { Length: 64 } && name.All(char.IsAsciiHexDigitLower))
            .ToHashSet(StringComparer.Ordinal)!;

    /// <summary>Everything in staging: verified blobs and partial uploads (<c>.part</c>, <c>.copy</c>).</summary>
    public IEnumerable<string> StagedFiles() =>
        System.IO.Directory.Exists(StagingDirectory)
            ? System.IO.Directory.EnumerateFiles(StagingDirectory, "*", SearchOption.AllDirectories)
            : [];

    /// <summary>Removes partial uploads and staged blobs the current sync does not use (keeps the rest for a retry).</summary>
    public void PruneStaging(IReadOnlySet<string> keep)
    {
        foreach (var file in StagedFiles().ToList())
        {
            if (!keep.Contains(Path.GetFileName(file)))
            {
                File.Delete(file);
            }
        }
    }

    public void ClearStaging() => PruneStaging(new HashSet<string>());

    /// <summary>
    /// Copies <paramref name="source"/> into staging as <paramref name="digest"/>, verifying its content on the way
    /// (the file is only trusted by size and mtime). False when the content no longer matches.
    /// </summary>
    public bool StageCopy(string source, string digest, long size)
    {
        var part = StagedPath(digest) + ".copy";
        using (var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256))
        {
            using (var input = new FileStream(source, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1, FileOptions.SequentialScan))
            using (var output = new FileStream(part, FileMode.Create, FileAccess.Write, FileShare.None, 1))
            {
                var buffer = new byte[1 << 20];
                long total = 0;
                int read;
                while ((read = input.Read(buffer)) > 0)
                {
                    hash.AppendData(buffer, 0, read);
                    output.Write(buffer, 0, read);
                    total += read;
                }

                output.Flush();
                if (total != size)
                {
                    File.Delete(part);
                    return false;
                }
            }

            if (Convert.ToHexStringLower(hash.GetHashAndReset()) != digest)
            {
                File.Delete(part);
                return false;
            }
        }

        File.Move(part, StagedPath(digest), overwrite: true);
        return true;
    }

    private static SavedTree? Load(string path)
    {
        if (!File.Exists(path))
        {
            return null;
        }

        using var reader = new BinaryReader(new BufferedStream(File.OpenRead(path), 1 << 16), Encoding.UTF8);
        if (reader.ReadString() != Magic)
        {
            throw new InvalidDataException($"{path} is not an rbs sync state file.");
        }

        var digest = reader.ReadString();
        var count = reader.ReadInt32();
        var entries = new List<TreeEntry>(count);
        for (var i = 0; i < count; i++)
        {
            var entryPath = reader.ReadString();
            var kind = (EntryKind)reader.ReadByte();
            var flags = reader.ReadByte();
            entries.Add(new TreeEntry
            {
                Path = entryPath,
                Kind = kind,
                Executable = (flags & 1) != 0,
                Write = (flags & 2) != 0,
                Implied = (flags & 4) != 0,
                Digest = kind == EntryKind.File ? reader.ReadString() : "",
                Size = kind == EntryKind.File ? reader.ReadInt64() : 0,
                MtimeTicks = kind == EntryKind.File ? reader.ReadInt64() : 0,
                SymlinkTarget = kind == EntryKind.Symlink ? reader.ReadString() : "",
            });
        }

        return new SavedTree(digest, entries);
    }

    private static void Save(string path, SavedTree tree)
    {
        var temp = path + ".tmp";
        using (var file = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16))
        {
            using (var writer = new BinaryWriter(file, Encoding.UTF8, leaveOpen: true))
            {
                writer.Write(Magic);
                writer.Write(tree.Digest);
                writer.Write(tree.Entries.Count);
                foreach (var entry in tree.Entries)
                {
                    writer.Write(entry.Path);
                    writer.Write((byte)entry.Kind);
                    writer.Write((byte)((entry.Executable ? 1 : 0) | (entry.Write ? 2 : 0) | (entry.Implied ? 4 : 0)));
                    if (entry.Kind == EntryKind.File)
                    {
                        writer.Write(entry.Digest);
                        writer.Write(entry.Size);
                        writer.Write(entry.MtimeTicks);
                    }
                    else if (entry.Kind == EntryKind.Symlink)
                    {
                        writer.Write(entry.SymlinkTarget);
                    }
                }
            }

            file.Flush(flushToDisk: true);
        }

        File.Move(temp, path, overwrite: true);
    }
}
