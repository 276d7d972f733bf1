namespace Rbs.Shared.Paths;

/// <summary>
/// The output-path rule the agent and jbazel share: the agent lists only outputs whose path passes it
/// (OutputPaths.IsSafeRelative) and jbazel writes only those below jbazel-out/ (OutputFetcher.DestinationPath, which
/// also refuses a backslash, a separator on a laptop that is not Linux). Sync paths (SyncPaths.ValidatePath) and the
/// working directory (WorkspacePaths) keep their own checks on purpose: see their comments.
/// </summary>
internal static class SafeRelativePath
{
    /// <summary>'/'-separated, relative, no empty, "." or ".." segments, no NUL: safe to join under any root.</summary>
    public static bool IsSafe(string path) =>
        path.Length > 0
        && path[0] != '/'
        && !path.Contains('\0', StringComparison.Ordinal)
        && path.Split('/').All(segment => segment.Length > 0 && segment != "." && segment != "..");
}
