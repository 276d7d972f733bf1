using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;

namespace Rbs.JBazel.Workspace;

/// <summary>
/// The stable identity of a workspace, sent to GetServer as <c>repo_hash</c>; the orchestrator keeps one
/// warm agent per (user, RepoHash).
/// </summary>
/// <remarks>
/// RepoHash v1 = lowercase hex SHA-256 of the UTF-8 bytes of
/// <c>"rbs-repo-hash/v1\n" + hostname + "\n" + realpath(workspace root)</c>, where hostname is
/// gethostname(2) and realpath resolves every symlink in the path. So the same checkout reached through a
/// symlink maps to the same agent, two checkouts on one machine get two agents, and the same path on two
/// machines never collides. The "v1" prefix lets a future scheme change the hash deliberately.
/// Documented in JBazel/README.md ("RepoHash").
/// </remarks>
internal static partial class RepoHash
{
    public const string Prefix = "rbs-repo-hash/v1\n";

    public static string Compute(string hostName, string workspaceRoot)
    {
        var input = Prefix + hostName + "\n" + RealPath(workspaceRoot);
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(input)));
    }

    /// <summary>The canonical absolute path: every symlink resolved, no "." or ".." (realpath(3)).</summary>
    public static string RealPath(string path)
    {
        var full = Path.GetFullPath(path);
        if (OperatingSystem.IsWindows())
        {
            return full;
        }

        var resolved = NativeRealPath(full, 0);
        if (resolved == 0)
        {
            // Missing or unreadable path: fall back to the lexical form rather than failing the command.
            return Path.TrimEndingDirectorySeparator(full);
        }

        try
        {
            return Marshal.PtrToStringUTF8(resolved) ?? full;
        }
        finally
        {
            Free(resolved);
        }
    }

    [LibraryImport("libc", EntryPoint = "realpath", StringMarshalling = StringMarshalling.Utf8)]
    private static partial nint NativeRealPath(string path, nint resolved);

    [LibraryImport("libc", EntryPoint = "free")]
    private static partial void Free(nint pointer);
}
