namespace Rbs.JBazel.Workspace;

/// <summary>The workspace jbazel runs in.</summary>
/// <param name="Root">Absolute path of the workspace root (the directory holding the marker file).</param>
/// <param name="RelativeWorkingDirectory">The current directory relative to <paramref name="Root"/>, with '/' separators; "" at the root.</param>
internal sealed record WorkspaceInfo(string Root, string RelativeWorkingDirectory);

/// <summary>Finds the workspace root the way bazel does: the nearest enclosing directory with a marker file.</summary>
internal static class WorkspaceLocator
{
    /// <summary>Files that make a directory a bazel workspace root (bazel 7+ and earlier).</summary>
    public static readonly IReadOnlyList<string> MarkerFiles = ["MODULE.bazel", "REPO.bazel", "WORKSPACE", "WORKSPACE.bazel"];

    public static WorkspaceInfo? Find(string currentDirectory)
    {
        var start = Path.TrimEndingDirectorySeparator(Path.GetFullPath(currentDirectory));
        for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
        {
            foreach (var marker in MarkerFiles)
            {
                // Files only: a directory named WORKSPACE does not make a workspace (nor does it for bazel).
                if (File.Exists(Path.Combine(dir.FullName, marker)))
                {
                    var root = Path.TrimEndingDirectorySeparator(dir.FullName);
                    var relative = Path.GetRelativePath(root, start);
                    relative = relative == "." ? "" : relative.Replace(Path.DirectorySeparatorChar, '/');
                    return new WorkspaceInfo(root, relative);
                }
            }
        }

        return null;
    }
}
