namespace Rbs.Agent.Execution;

/// <summary>Finds the configured build tool: an absolute path as is, a bare name on PATH (like a shell would).</summary>
internal static class BuildToolLocator
{
    /// <summary>The tool's absolute path, or null with <paramref name="error"/> explaining what to fix.</summary>
    public static string? Resolve(string buildTool, string? pathVariable, out string error)
    {
        error = "";
        if (string.IsNullOrWhiteSpace(buildTool))
        {
            error = "Agent:BuildTool (--build-tool) is empty; set it to a name on PATH (e.g. 'bazel') or an absolute path.";
            return null;
        }

        if (Path.IsPathRooted(buildTool))
        {
            if (IsExecutableFile(buildTool))
            {
                return buildTool;
            }

            error = $"Agent:BuildTool '{buildTool}' is not an executable file.";
            return null;
        }

        if (buildTool.Contains('/', StringComparison.Ordinal))
        {
            error = $"Agent:BuildTool '{buildTool}' must be a bare name looked up on PATH or an absolute path, not a relative path.";
            return null;
        }

        foreach (var dir in (pathVariable ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = Path.Combine(dir, buildTool);
            if (Path.IsPathRooted(candidate) && IsExecutableFile(candidate))
            {
                return candidate;
            }
        }

        error = $"Agent:BuildTool '{buildTool}' was not found on PATH ({pathVariable}); install it or pass an absolute path with --build-tool.";
        return null;
    }

    private static bool IsExecutableFile(string path)
    {
        if (!File.Exists(path))
        {
            return false;
        }

        if (OperatingSystem.IsWindows())
        {
            return true;
        }

        const UnixFileMode AnyExecute = UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute;
        return (File.GetUnixFileMode(path) & AnyExecute) != 0;
    }
}
