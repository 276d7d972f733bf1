using Rbs.V1;

namespace Rbs.Agent.Sync;

/// <summary>One entry of a tree: a manifest entry, an index record or a journal record.</summary>
internal sealed class TreeEntry
{
    public required string Path { get; init; }

    public required EntryKind Kind { get; init; }

    /// <summary>Files: lower-case hex SHA-256 of the content; otherwise empty.</summary>
    public string Digest { get; init; } = "";

    public long Size { get; init; }

    public bool Executable { get; init; }

    public string SymlinkTarget { get; init; } = "";

    /// <summary>Index only: the file's mtime (UTC ticks) when the agent last wrote or verified it.</summary>
    public long MtimeTicks { get; set; }

    /// <summary>Journal only: the file's content must be placed from staging (false: it is already in place).</summary>
    public bool Write { get; set; }

    /// <summary>Directories the manifest implies as parents (not listed themselves).</summary>
    public bool Implied { get; init; }
}

/// <summary>A received, fully validated manifest: the tree the client wants, parents included.</summary>
internal sealed class SyncManifest
{
    public required string Digest { get; init; }

    /// <summary>Every path of the new tree (listed entries and implied parent directories), ordinal by UTF-8.</summary>
    public required IReadOnlyList<TreeEntry> Entries { get; init; }

    public required IReadOnlyDictionary<string, TreeEntry> ByPath { get; init; }

    public required int ListedCount { get; init; }

    public required long TotalBytes { get; init; }
}
