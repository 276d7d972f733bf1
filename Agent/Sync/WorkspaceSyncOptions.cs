namespace Rbs.Agent.Sync;

/// <summary>How the agent compares path names when checking a manifest for collisions.</summary>
internal enum SyncCaseSensitivity
{
    /// <summary>Probe the workspace's filesystem once (create a file, look it up by another case).</summary>
    Auto,

    /// <summary>Names differing only in case are distinct files (Linux filesystems).</summary>
    Sensitive,

    /// <summary>Names differing only in case are the same file; manifests with such pairs are refused.</summary>
    Insensitive,
}

/// <summary>
/// Workspace sync (<c>rbs.v1.WorkspaceSync</c>; section <c>Agent:Sync</c>, env <c>Agent__Sync__Key</c>; flags
/// <c>--sync-state-dir</c>, <c>--sync-max-file-bytes</c>, <c>--sync-max-total-bytes</c>, <c>--sync-max-entries</c>,
/// <c>--sync-case</c>).
/// </summary>
internal sealed class WorkspaceSyncOptions
{
    public const string SectionName = "Agent:Sync";

    /// <summary>
    /// Where the agent keeps the index of the tree it last applied, the apply journal and uploaded blobs. Must be
    /// outside the workspace (a sync deletes whatever the manifest does not list); best on the workspace's filesystem
    /// (blobs are then moved into place by rename, not copied). Default: a sibling of the workspace,
    /// <c>&lt;parent&gt;/.&lt;workspace-name&gt;.rbs-sync</c>; when that cannot be created (e.g. workspace
    /// <c>/workspace</c> in a container), <c>~/.cache/rbs/sync/&lt;workspace-name&gt;-&lt;hash&gt;</c>.
    /// </summary>
    public string? StateDirectory { get; set; }

    /// <summary>The largest single file a manifest may list, in bytes. Default 4 GiB (<c>4294967296</c>).</summary>
    public long MaxFileBytes { get; set; } = 4L << 30;

    /// <summary>The largest sum of file sizes a manifest may list, in bytes. Default 32 GiB (<c>34359738368</c>).</summary>
    public long MaxTotalBytes { get; set; } = 32L << 30;

    /// <summary>The most entries (files, empty directories, symlinks) a manifest may list. Default <c>1000000</c>.</summary>
    public long MaxEntries { get; set; } = 1_000_000;

    /// <summary>
    /// Whether names that differ only in case collide: <c>auto</c> (probe the workspace's filesystem),
    /// <c>sensitive</c> or <c>insensitive</c>. Default <c>auto</c>.
    /// </summary>
    public SyncCaseSensitivity CaseSensitivity { get; set; } = SyncCaseSensitivity.Auto;

    /// <summary>The friendly flags, mapped onto this section (merged into the agent's switch mappings).</summary>
    public static readonly IReadOnlyDictionary<string, string> SwitchMappings = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        ["--sync-state-dir"] = $"{SectionName}:{nameof(StateDirectory)}",
        ["--sync-max-file-bytes"] = $"{SectionName}:{nameof(MaxFileBytes)}",
        ["--sync-max-total-bytes"] = $"{SectionName}:{nameof(MaxTotalBytes)}",
        ["--sync-max-entries"] = $"{SectionName}:{nameof(MaxEntries)}",
        ["--sync-case"] = $"{SectionName}:{nameof(CaseSensitivity)}",
    };

    /// <summary>The state directory to use for <paramref name="workspace"/>: the configured one or the default sibling.</summary>
    public string ResolveStateDirectory(string workspace)
    {
        if (!string.IsNullOrWhiteSpace(StateDirectory))
        {
            return Path.GetFullPath(StateDirectory);
        }

        var trimmed = Path.TrimEndingDirectorySeparator(Path.GetFullPath(workspace));
        var parent = Path.GetDirectoryName(trimmed) ?? "/";
        return Path.Combine(parent, $".{Path.GetFileName(trimmed)}.rbs-sync");
    }
}
