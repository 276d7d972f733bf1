namespace Rbs.JBazel.Sync;

/// <summary>
/// Where git keeps a checkout's repository: <c>.git</c> is the repository itself, or (a worktree, a submodule,
/// <c>git init --separate-git-dir</c>) a file <c>gitdir: PATH</c> naming it. A worktree's own directory
/// (<c>.git/worktrees/NAME</c>) holds HEAD, index and the per-worktree refs; its <c>commondir</c> file names the
/// repository that holds everything else (objects, refs, config, info/exclude).
/// </summary>
internal static class GitDirectories
{
    /// <summary>The directory a <c>.git</c> file names, made absolute against the directory holding it; null when it is not one.</summary>
    public static string? ReadGitFile(string dotGitFile)
    {
        try
        {
            var text = File.ReadAllText(dotGitFile).TrimEnd('\n', '\r');
            const string Prefix = "gitdir: ";
            if (!text.StartsWith(Prefix, StringComparison.Ordinal) || text.Contains('\n', StringComparison.Ordinal))
            {
                return null;
            }

            return Path.TrimEndingDirectorySeparator(Path.GetFullPath(text[Prefix.Length..], Path.GetDirectoryName(Path.GetFullPath(dotGitFile))!));
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or ArgumentException)
        {
            return null;
        }
    }

    /// <summary>The repository directory for a <c>.git</c> entry (directory or file), or null.</summary>
    public static string? GitDir(string dotGit) =>
        Directory.Exists(dotGit) ? dotGit : File.Exists(dotGit) ? ReadGitFile(dotGit) : null;

    /// <summary>The common directory of <paramref name="gitDir"/>: what its <c>commondir</c> file names, else itself.</summary>
    public static string CommonDir(string gitDir)
    {
        try
        {
            var file = Path.Combine(gitDir, "commondir");
            if (File.Exists(file))
            {
                var text = File.ReadAllText(file).Trim();
                if (text.Length > 0)
                {
                    return Path.TrimEndingDirectorySeparator(Path.GetFullPath(text, gitDir));
                }
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or ArgumentException)
        {
        }

        return gitDir;
    }

    // git's path.c common_list: what a worktree shares with its repository. Everything else in the common directory
    // (HEAD, index, MERGE_HEAD, rebase state, ...) is the main worktree's own.
    private static readonly HashSet<string> s_commonTrees = new(StringComparer.Ordinal)
    {
        "branches", "common", "hooks", "info", "logs", "lost-found", "objects", "refs", "remotes", "rr-cache", "svn",
    };

    private static readonly HashSet<string> s_commonFiles = new(StringComparer.Ordinal) { "config", "packed-refs", "shallow" };

    private static readonly string[] s_perWorktree =
    [
        "info/sparse-checkout", "logs/HEAD", "logs/refs/bisect", "logs/refs/rewritten", "logs/refs/worktree",
        "refs/bisect", "refs/rewritten", "refs/worktree",
    ];

    // A worktree's files that only make sense in the checkout that has them.
    private static readonly HashSet<string> s_worktreeLinks = new(StringComparer.Ordinal) { "commondir", "gitdir", "locked" };

    /// <summary>
    /// The repository as one self-contained <c>.git</c> directory: the worktree's own files over the shared ones of its
    /// common directory (git's common list), so git on the agent sees this worktree's HEAD and index.
    /// </summary>
    /// <returns>(path below <c>.git</c>, full path, is directory) of files and of directories that would be empty.</returns>
    public static List<(string Relative, string Full, bool Directory)> SelfContained(string gitDir, string commonDir)
    {
        var result = new List<(string, string, bool)>();
        var own = new HashSet<string>(StringComparer.Ordinal);
        var separate = !string.Equals(gitDir, commonDir, StringComparison.Ordinal);
        Enumerate(gitDir, "", relative => !separate || !s_worktreeLinks.Contains(relative), result, own);
        if (separate)
        {
            Enumerate(commonDir, "", relative => IsCommon(relative) && !own.Contains(relative), result, own);
        }

        // A directory empty in one source may hold files from the other: only really empty ones stay.
        var parents = result.Select(entry => entry.Item1)
            .SelectMany(path => Enumerable.Range(0, path.Length).Where(i => path[i] == '/').Select(i => path[..i]))
            .ToHashSet(StringComparer.Ordinal);
        result.RemoveAll(entry => entry.Item3 && parents.Contains(entry.Item1));
        return result;
    }

    private static bool IsCommon(string relative)
    {
        var slash = relative.IndexOf('/', StringComparison.Ordinal);
        var top = slash < 0 ? relative : relative[..slash];
        if (!(slash < 0 ? s_commonFiles.Contains(top) || s_commonTrees.Contains(top) : s_commonTrees.Contains(top)))
        {
            return false;
        }

        return !s_perWorktree.Any(path => relative == path || relative.StartsWith(path + "/", StringComparison.Ordinal));
    }

    private static void Enumerate(string directory, string relativeDirectory, Func<string, bool> include, List<(string, string, bool)> result, HashSet<string> seen)
    {
        string[] names;
        try
        {
            names = Directory.GetFileSystemEntries(directory).Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal).ToArray();
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return;
        }

        var included = 0;
        foreach (var name in names)
        {
            var relative = relativeDirectory.Length == 0 ? name : relativeDirectory + "/" + name;
            var full = Path.Combine(directory, name);
            if (!include(relative))
            {
                continue;
            }

            var stat = FileStats.Get(full, follow: true);
            if (stat.Kind == FileKind.Directory)
            {
                included++;
                Enumerate(full, relative, include, result, seen);
            }
            else if (stat.Kind == FileKind.File && seen.Add(relative))
            {
                included++;
                result.Add((relative, full, false));
            }
        }

        // git needs refs/ and objects/ to exist even when everything is packed.
        if (included == 0 && relativeDirectory.Length > 0 && seen.Add(relativeDirectory))
        {
            result.Add((relativeDirectory, directory, true));
        }
    }
}
