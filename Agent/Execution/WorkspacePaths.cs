using Grpc.Core;
using Rbs.Shared.Text;

namespace Rbs.Agent.Execution;

/// <summary>Confines a client's working directory to the workspace: no absolute paths, no '..', no symlink escapes.</summary>
internal static class WorkspacePaths
{
    /// <summary>The real (symlink-free) directory to run in.</summary>
    /// <remarks>
    /// Not Shared/Paths/SafeRelativePath on purpose: a working directory is what a user typed ("", ".", "a/./b" and
    /// "a//b" are fine), it must already exist, and realpath decides where it is, so only '..' and absolute paths are
    /// refused up front and the resolved path must be inside the workspace (a symlink cannot lead out).
    /// </remarks>
    /// <param name="workspaceRealPath">The workspace root, already resolved with realpath.</param>
    /// <param name="relative">The client's relative_working_directory ("" or "." = the root).</param>
    /// <exception cref="RpcException">InvalidArgument for escapes, FailedPrecondition for a missing directory.</exception>
    public static string ResolveWorkingDirectory(string workspaceRealPath, string relative)
    {
        if (string.IsNullOrEmpty(relative) || relative == ".")
        {
            return workspaceRealPath;
        }

        if (relative.Contains('\0', StringComparison.Ordinal))
        {
            throw Invalid("relative_working_directory contains a NUL character.");
        }

        if (Path.IsPathRooted(relative))
        {
            throw Invalid(
                $"relative_working_directory '{UntrustedText.Echo(relative)}' is absolute; send the directory relative to the workspace root.");
        }

        if (relative.Split('/').Any(segment => segment == ".."))
        {
            throw Invalid($"relative_working_directory '{UntrustedText.Echo(relative)}' contains '..'; it must stay inside the workspace.");
        }

        var combined = Path.Combine(workspaceRealPath, relative);
        var real = Native.RealPath(combined);
        if (real is null || !Directory.Exists(real))
        {
            throw new RpcException(new Status(
                StatusCode.FailedPrecondition,
                $"working directory '{UntrustedText.Echo(relative)}' does not exist in the agent's workspace ({UntrustedText.Echo(combined)})."));
        }

        if (!IsInside(workspaceRealPath, real))
        {
            throw Invalid(
                $"relative_working_directory '{UntrustedText.Echo(relative)}' resolves to '{UntrustedText.Echo(real)}', outside the workspace '{workspaceRealPath}' (symlink escape).");
        }

        return real;
    }

    public static bool IsInside(string root, string path) =>
        path == root || path.StartsWith(root.EndsWith('/') ? root : root + "/", StringComparison.Ordinal);

    private static RpcException Invalid(string message) => new(new Status(StatusCode.InvalidArgument, message));
}
