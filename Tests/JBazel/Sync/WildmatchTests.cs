using Rbs.JBazel.Sync;

namespace Rbs.Tests.JBazel.Sync;

/// <summary>Pattern matching with git's semantics (cases after git's t3070-wildmatch and gitignore(5)).</summary>
public sealed class WildmatchTests
{
    [Theory]
    [InlineData("foo", "foo", true)]
    [InlineData("foo", "bar", false)]
    [InlineData("???", "foo", true)]
    [InlineData("??", "foo", false)]
    [InlineData("*", "foo", true)]
    [InlineData("f*", "foo", true)]
    [InlineData("*f", "foo", false)]
    [InlineData("*foo*", "foo", true)]
    [InlineData("*ob*a*r*", "foobar", true)]
    [InlineData("\\*", "*", true)]
    [InlineData("\\*", "foo", false)]
    [InlineData("\\?", "?", true)]
    [InlineData("[ab]c", "bc", true)]
    [InlineData("[!ab]c", "bc", false)]
    [InlineData("[^ab]c", "dc", true)]
    [InlineData("[a-c]x", "bx", true)]
    [InlineData("[a-c]x", "dx", false)]
    [InlineData("[]]", "]", true)]
    [InlineData("[!]]", "a", true)]
    [InlineData("[[:digit:]]", "7", true)]
    [InlineData("[[:upper:]]", "a", false)]
    [InlineData("foo/*", "foo/bar", true)]
    [InlineData("foo/*", "foo/bar/baz", false)]
    [InlineData("foo*", "foo/bar", false)]
    [InlineData("foo?bar", "foo/bar", false)]
    [InlineData("foo[/]bar", "foo/bar", false)]
    [InlineData("**/foo", "foo", true)]
    [InlineData("**/foo", "a/b/foo", true)]
    [InlineData("**/foo", "a/b/xfoo", false)]
    [InlineData("foo/**", "foo/a/b", true)]
    [InlineData("foo/**", "foo", false)]
    [InlineData("a/**/b", "a/b", true)]
    [InlineData("a/**/b", "a/x/y/b", true)]
    [InlineData("a/**/b", "a/x/y/c", false)]
    [InlineData("a**b", "a/b", false)]
    [InlineData("a**b", "axxb", true)]
    [InlineData("*/bar", "foo/bar", true)]
    [InlineData("*/bar", "a/foo/bar", false)]
    public void MatchesPathsLikeGit(string pattern, string path, bool expected) =>
        Assert.Equal(expected, Wildmatch.Match(pattern, path, pathname: true));

    [Theory]
    [InlineData("# comment", null)]
    [InlineData("", null)]
    [InlineData("   ", null)]
    [InlineData("\\#hash", "#hash")]
    [InlineData("\\!bang", "!bang")]
    [InlineData("!keep", "!keep")]
    [InlineData("trailing   ", "trailing")]
    [InlineData("dir/", "dir/")]
    [InlineData("/anchored", "anchored")]
    public void ParsesLinesLikeGit(string line, string? expected) =>
        Assert.Equal(expected, IgnorePattern.Parse(line)?.ToString());

    [Fact]
    public void EscapedTrailingSpaceIsKept()
    {
        var pattern = IgnorePattern.Parse("name\\ ")!;
        Assert.True(pattern.Matches("name ", "name ", isDirectory: false));
        Assert.False(pattern.Matches("name", "name", isDirectory: false));
    }

    [Fact]
    public void NameOnlyPatternsMatchAtAnyDepthAnchoredOnesOnlyFromTheBase()
    {
        var name = IgnorePattern.Parse("*.o")!;
        Assert.True(name.MatchesName);
        Assert.True(name.Matches("a/b/c.o", "c.o", isDirectory: false));

        var anchored = IgnorePattern.Parse("/c.o")!;
        Assert.False(anchored.MatchesName);
        Assert.True(anchored.Matches("c.o", "c.o", isDirectory: false));
        Assert.False(anchored.Matches("a/c.o", "c.o", isDirectory: false));

        var middle = IgnorePattern.Parse("doc/*.md")!;
        Assert.True(middle.Matches("doc/x.md", "x.md", isDirectory: false));
        Assert.False(middle.Matches("src/doc/x.md", "x.md", isDirectory: false));

        var directoryOnly = IgnorePattern.Parse("out/")!;
        Assert.True(directoryOnly.MatchesName);
        Assert.True(directoryOnly.Matches("a/out", "out", isDirectory: true));
        Assert.False(directoryOnly.Matches("a/out", "out", isDirectory: false));
    }
}
