using System.Text;
using Rbs.Agent.Sync;
using Rbs.V1;

namespace Rbs.Tests.Agent.Sync;

/// <summary>Compares two directory trees the way bazel would see them (ignoring root bazel-* symlinks).</summary>
internal static class TreeAssert
{
    public static void Equal(string expectedRoot, string actualRoot)
    {
        var expected = Describe(expectedRoot);
        var actual = Describe(actualRoot);
        var missing = expected.Keys.Except(actual.Keys).ToList();
        var extra = actual.Keys.Except(expected.Keys).ToList();
        Assert.True(missing.Count == 0 && extra.Count == 0,
            $"trees differ: missing [{string.Join(", ", missing)}], extra [{string.Join(", ", extra)}]");
        foreach (var (path, description) in expected)
        {
            Assert.True(description == actual[path], $"'{path}': expected {description}, got {actual[path]}");
        }
    }

    /// <summary>Path → "kind, exec, sha/target" for every entry.</summary>
    public static SortedDictionary<string, string> Describe(string root)
    {
        var result = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var (path, entry) in WorkspaceTree.Walk(root))
        {
            if (entry.Kind == EntryKind.Symlink && SyncPaths.IsBazelConvenienceName(path))
            {
                continue;
            }

            result[path] = entry.Kind switch
            {
                EntryKind.File => $"file exec={entry.Executable} sha={Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(Path.Combine(root, path))))}",
                EntryKind.Symlink => $"symlink -> {entry.SymlinkTarget}",
                _ => entry.Kind.ToString(),
            };
        }

        return result;
    }

    public static string Dump(string root) => new StringBuilder().AppendJoin('\n', Describe(root).Select(p => $"{p.Key}: {p.Value}")).ToString();
}
