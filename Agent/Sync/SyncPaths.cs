using System.Text;
using Grpc.Core;

namespace Rbs.Agent.Sync;

/// <summary>The path and symlink rules of a manifest: nothing it describes may land outside the workspace.</summary>
internal static class SyncPaths
{
    public const int MaxSegmentBytes = 255;
    public const int MaxPathBytes = 4096;

    // Symlink chains longer than Linux's own limit (MAXSYMLINKS = 40) would fail to resolve on disk anyway.
    private const int MaxSymlinkExpansions = 40;

    /// <summary>Throws InvalidArgument unless <paramref name="path"/> is a clean, relative, '/'-separated path.</summary>
    public static void ValidatePath(string path)
    {
        if (path.Length == 0)
        {
            throw Invalid("a manifest entry has an empty path.");
        }

        if (path.Contains('\0', StringComparison.Ordinal))
        {
            throw Invalid($"path '{Printable(path)}' contains a NUL character.");
        }

        if (path.Contains('\\', StringComparison.Ordinal))
        {
            throw Invalid($"path '{path}' contains a backslash; paths are '/'-separated and backslashes are not allowed in names.");
        }

        if (path[0] == '/')
        {
            throw Invalid($"path '{path}' is absolute; manifest paths are relative to the workspace root.");
        }

        if (path[^1] == '/')
        {
            throw Invalid($"path '{path}' ends with '/'.");
        }

        if (Encoding.UTF8.GetByteCount(path) > MaxPathBytes)
        {
            throw Invalid($"path '{path[..64]}...' is longer than {MaxPathBytes} bytes.");
        }

        foreach (var segment in path.Split('/'))
        {
            if (segment.Length == 0)
            {
                throw Invalid($"path '{path}' has an empty segment ('//').");
            }

            if (segment is "." or "..")
            {
                throw Invalid($"path '{path}' contains a '{segment}' segment; it must stay inside the workspace.");
            }

            if (Encoding.UTF8.GetByteCount(segment) > MaxSegmentBytes)
            {
                throw Invalid($"path '{path}' has a name longer than {MaxSegmentBytes} bytes.");
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
            throw Invalid($"symlink '{linkPath}' has an empty target.");
        }

        if (target.Contains('\0', StringComparison.Ordinal))
        {
            throw Invalid($"symlink '{linkPath}' has a target containing a NUL character.");
        }

        if (target[0] == '/')
        {
            throw Invalid($"symlink '{linkPath}' -> '{target}' is absolute; only relative targets inside the workspace are synced.");
        }

        if (Encoding.UTF8.GetByteCount(target) > MaxPathBytes)
        {
            throw Invalid($"symlink '{linkPath}' has a target longer than {MaxPathBytes} bytes.");
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
                    throw Invalid($"symlink '{linkPath}' -> '{target}' resolves outside the workspace.");
                }

                resolved.RemoveAt(resolved.Count - 1);
                continue;
            }

            resolved.Add(segment);
            if (symlinks.TryGetValue(string.Join('/', resolved), out var next))
            {
                if (++expansions > MaxSymlinkExpansions)
                {
                    throw Invalid($"symlink '{linkPath}' -> '{target}' does not resolve (a symlink loop).");
                }

                // A link's target is relative to the directory holding the link.
                resolved.RemoveAt(resolved.Count - 1);
                if (next.StartsWith('/'))
                {
                    throw Invalid($"symlink '{linkPath}' -> '{target}' resolves through an absolute symlink.");
                }

                PushReversed(pending, next);
            }
        }
    }

    /// <summary>Ordinal comparison of the UTF-8 encodings (the manifest's sort order), without allocating.</summary>
    public static int CompareUtf8(string a, string b)
    {
        // UTF-16 ordinal order equals UTF-8 byte order except where surrogates meet U+E000..U+FFFF; compare by
        // code point, which is exactly UTF-8 byte order.
        var i = 0;
        var j = 0;
        while (i < a.Length && j < b.Length)
        {
            var ca = char.IsSurrogatePair(a, i) ? char.ConvertToUtf32(a, i) : a[i];
            var cb = char.IsSurrogatePair(b, j) ? char.ConvertToUtf32(b, j) : b[j];
            if (ca != cb)
            {
                return ca < cb ? -1 : 1;
            }

            i += ca > 0xFFFF ? 2 : 1;
            j += cb > 0xFFFF ? 2 : 1;
        }

        return (a.Length - i).CompareTo(b.Length - j);
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

    private static string Printable(string path) => path.Replace("\0", "\\0", StringComparison.Ordinal);
}
