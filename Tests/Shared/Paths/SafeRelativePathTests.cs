using Rbs.Shared.Paths;

namespace Rbs.Tests.Shared.Paths;

public sealed class SafeRelativePathTests
{
    [Theory]
    [InlineData("bazel-out/k8-fastbuild/bin/app", true)]
    [InlineData("a", true)]
    [InlineData("a\\b", true)] // a legal Linux name; jbazel refuses it on top of this rule
    [InlineData("", false)]
    [InlineData("/etc/passwd", false)]
    [InlineData("a/../../b", false)]
    [InlineData("./a", false)]
    [InlineData("a//b", false)]
    [InlineData("a/", false)]
    [InlineData("a\0b", false)]
    public void OnlyPathsThatStayBelowTheRootAreSafe(string path, bool safe) =>
        Assert.Equal(safe, SafeRelativePath.IsSafe(path));
}
