using System.Text;
using Grpc.Core;
using Rbs.Shared.Text;

namespace Rbs.Agent.Sync;

/// <summary>The path and symlink rules of a manifest: nothing it describes may land outside the workspace.</summary>
internal static class SyncPaths
{
    public const int MaxSegmentBytes = 255;
    public const int MaxPathBytes = 4096;

    // Symlink chains longer than Linux's own limit (MAXSYMLINKS = 40) would fail to resolve on disk anyway.
    private const int MaxSymlinkExpansions = 40;

    /// <summary>Throws InvalidArgument unless <paramref name="path"/> is a clean, relative, '/'-separated path.</summary>
    /// <remarks>
    /// Stricter than Shared/Paths/SafeRelativePath on purpose: a manifest path becomes a file the agent creates, so it
    /// also refuses a backslash, a trailing '/', names and paths over Linux's limits, and says which rule a client broke.
    /// </remarks>
    public static void ValidatePath(string path)
    {
        if (path.Length == 0)
        {
            throw Invalid("a manifest entry has an empty path.");
        }

        if (path.Contains('\0', StringComparison.Ordinal))
        {
            throw Invalid($"path '{Shown(path)}' contains a NUL character.");
        }

        if (path.Contains('\\', StringComparison.Ordinal))
        {
            throw Invalid($"path '{Shown(path)}' contains a backslash; paths are '/'-separated and backslashes are not allowed in names.");
        }

        if (path[0] == '/')
        {
            throw Invalid($"path '{Shown(path)}' is absolute; manifest paths are relative to the workspace root.");
        }

        if (path[^1] == '/')
        {
            throw Invalid($"path '{Shown(path)}' ends with '/'.");
        }

        if (Encoding.UTF8.GetByteCount(path) > MaxPathBytes)
        {
            throw Invalid($"path '{Shown(path)}' is longer than {MaxPathBytes} bytes.");
        }

        foreach (var segment in path.Split('/'))
        {
            if (segment.Length == 0)
            {
                throw Invalid($"path '{Shown(path)}' has an empty segment ('//').");
            }

            if (segment is "." or "..")
            {
                throw Invalid($"path '{Shown(path)}' contains a '{segment}' segment; it must stay inside the workspace.");
            }

            if (Encoding.UTF8.GetByteCount(segment) > MaxSegmentBytes)
            {
                throw Invalid($"path '{Shown(path)}' has a name longer than {MaxSegmentBytes} bytes.");
            }
        }
    }

    /// <summary>
    /// Throws InvalidArgument unless the symlink at <paramref name="linkPath"/> with <paramref name="target"/>
    /// resolves inside the workspace. Resolution is lexical, relative to the link's directory, and follows the other
    /// symlinks of the manifest (<paramref name="symlinks"/>: path → target) the way the kernel would.
    /// </summary>
    public static void ValidateSymlink(string linkPath, string target, IReadOnlyDictionary<string, string> symlinks)
    {
        if (target.Length == 0)
        {
            throw Invalid($"symlink '{Shown(linkPath)}' has an empty target.");
        }

        if (target.Contains('\0', StringComparison.Ordinal))
        {
            throw Invalid($"symlink '{Shown(linkPath)}' has a target containing a NUL character.");
        }

        if (target[0] == '/')
        {
            throw Invalid($"symlink '{Shown(linkPath)}' -> '{Shown(target)}' is absolute; only relative targets inside the workspace are synced.");
        }

        if (Encoding.UTF8.GetByteCount(target) > MaxPathBytes)
        {
            throw Invalid($"symlink '{Shown(linkPath)}' has a target longer than {MaxPathBytes} bytes.");
        }

        // The resolved location as a stack of real (symlink-free) names from the workspace root.
        var resolved = new List<string>(linkPath.Split('/'));
        resolved.RemoveAt(resolved.Count - 1);
        var pending = new Stack<string>();
        PushReversed(pending, target);
        var expansions = 0;
        while (pending.Count > 0)
        {
            var segment = pending.Pop();
            if (segment is "" or ".")
            {
                continue;
            }

            if (segment == "..")
            {
                if (resolved.Count == 0)
                {
                    throw Invalid($"symlink '{Shown(linkPath)}' -> '{Shown(target)}' resolves outside the workspace.");
                }

                resolved.RemoveAt(resolved.Count - 1);
                continue;
            }

            resolved.Add(segment);
            if (symlinks.TryGetValue(string.Join('/', resolved), out var next))
            {
                if (++expansions > MaxSymlinkExpansions)
                {
                    throw Invalid($"symlink '{Shown(linkPath)}' -> '{Shown(target)}' does not resolve (a symlink loop).");
                }

                // A link's target is relative to the directory holding the link.
                resolved.RemoveAt(resolved.Count - 1);
                if (next.StartsWith('/'))
                {
                    throw Invalid($"symlink '{Shown(linkPath)}' -> '{Shown(target)}' resolves through an absolute symlink.");
                }

                PushReversed(pending, next);
            }
        }
    }

    /// <summary>Whether <paramref name="path"/> is a root-level <c>bazel-*</c> name (bazel's convenience symlinks).</summary>
    public static bool IsBazelConvenienceName(string path) =>
        path.StartsWith("bazel-", StringComparison.Ordinal) && !path.Contains('/', StringComparison.Ordinal);

    public static RpcException Invalid(string message) => new(new Status(StatusCode.InvalidArgument, message));

    private static void PushReversed(Stack<string> stack, string path)
    {
        var segments = path.Split('/');
        for (var i = segments.Length - 1; i >= 0; i--)
        {
            stack.Push(segments[i]);
        }
    }

    /// <summary>A client's path as a message quotes it: bounded, control characters (NUL included) escaped.</summary>
    public static string Shown(string path) => UntrustedText.Echo(path);
}
