using System.Security.Cryptography;
using System.Text;
using Rbs.JBazel.Workspace;

namespace Rbs.Tests.JBazel;

public sealed class WorkspaceTests : IDisposable
{
    private readonly string _base = Directory.CreateTempSubdirectory("jbazel-ws-").FullName;

    public void Dispose() => Directory.Delete(_base, recursive: true);

    [Theory]
    [InlineData("MODULE.bazel")]
    [InlineData("REPO.bazel")]
    [InlineData("WORKSPACE")]
    [InlineData("WORKSPACE.bazel")]
    public void EachMarkerFileMakesAWorkspaceRoot(string marker)
    {
        var root = Path.Combine(_base, "repo");
        var deep = Path.Combine(root, "a", "b c", "d");
        Directory.CreateDirectory(deep);
        File.WriteAllText(Path.Combine(root, marker), "");

        Assert.Equal(new WorkspaceInfo(root, "a/b c/d"), WorkspaceLocator.Find(deep));
        Assert.Equal(new WorkspaceInfo(root, ""), WorkspaceLocator.Find(root));
        Assert.Equal(new WorkspaceInfo(root, "a"), WorkspaceLocator.Find(Path.Combine(root, "a") + "/"));
    }

    [Fact]
    public void TheNearestEnclosingWorkspaceWins()
    {
        var outer = Path.Combine(_base, "outer");
        var inner = Path.Combine(outer, "third_party", "inner");
        Directory.CreateDirectory(Path.Combine(inner, "pkg"));
        File.WriteAllText(Path.Combine(outer, "WORKSPACE"), "");
        File.WriteAllText(Path.Combine(inner, "MODULE.bazel"), "");

        Assert.Equal(new WorkspaceInfo(inner, "pkg"), WorkspaceLocator.Find(Path.Combine(inner, "pkg")));
        Assert.Equal(new WorkspaceInfo(outer, "third_party"), WorkspaceLocator.Find(Path.Combine(outer, "third_party")));
    }

    [Fact]
    public void DirectoriesNamedLikeMarkersDoNotCount()
    {
        var dir = Path.Combine(_base, "nows");
        Directory.CreateDirectory(Path.Combine(dir, "WORKSPACE"));
        Directory.CreateDirectory(Path.Combine(dir, "MODULE.bazel"));

        Assert.Null(WorkspaceLocator.Find(dir));
    }

    [Fact]
    public void RepoHashIsTheDocumentedSha256()
    {
        var root = Path.Combine(_base, "repo");
        Directory.CreateDirectory(root);
        var expected = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes("rbs-repo-hash/v1\nlaptop-7\n" + root)));

        Assert.Equal(expected, RepoHash.Compute("laptop-7", root));
        Assert.Equal(expected, RepoHash.Compute("laptop-7", root)); // stable
        Assert.Matches("^[0-9a-f]{64}$", expected);
        Assert.Equal("rbs-repo-hash/v1\n", RepoHash.Prefix);
    }

    [Fact]
    public void RepoHashSeesThroughSymlinksAndSeparatesHostsAndCheckouts()
    {
        var root = Path.Combine(_base, "real", "repo");
        Directory.CreateDirectory(root);
        var linkedParent = Path.Combine(_base, "link-to-real");
        Directory.CreateSymbolicLink(linkedParent, Path.Combine(_base, "real"));
        var linkedRoot = Path.Combine(_base, "link-to-repo");
        Directory.CreateSymbolicLink(linkedRoot, root);
        var other = Path.Combine(_base, "real", "other");
        Directory.CreateDirectory(other);

        var hash = RepoHash.Compute("h", root);
        Assert.Equal(hash, RepoHash.Compute("h", Path.Combine(linkedParent, "repo")));
        Assert.Equal(hash, RepoHash.Compute("h", linkedRoot));
        Assert.Equal(hash, RepoHash.Compute("h", Path.Combine(root, "..", "repo")));
        Assert.Equal(root, RepoHash.RealPath(Path.Combine(linkedParent, "repo")));
        Assert.NotEqual(hash, RepoHash.Compute("other-host", root));
        Assert.NotEqual(hash, RepoHash.Compute("h", other));
    }
}
