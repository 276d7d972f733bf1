using Rbs.JBazel.Outputs;

namespace Rbs.Tests.JBazel.Outputs;

/// <summary>When jbazel asks for test logs, and the one line that says where they are.</summary>
public sealed class TestLogsStepTests
{
    [Theory]
    [InlineData(true, true, new[] { "test", "//..." }, true)]
    [InlineData(true, true, new[] { "--output_user_root", "/tmp/x", "coverage", "//..." }, true)]
    [InlineData(true, true, new[] { "--output_user_root", "/tmp/test", "build", "//..." }, false)]
    [InlineData(true, false, new[] { "test", "//..." }, false)]
    [InlineData(false, true, new[] { "test", "//..." }, false)]
    [InlineData(true, true, new[] { "run", "//:test" }, false)]
    public void OnlyTestAndCoverageOnASyncedAgentUnlessTurnedOff(bool synced, bool fetch, string[] args, bool applies) =>
        Assert.Equal(applies, TestLogsStep.Applies(synced, fetch, args));

    [Fact]
    public void TheLineNamesTheDirectoryAndAtMostFiveTests()
    {
        Assert.Equal("rbs: logs of 1 test that did not pass (//a:t) are in /ws/jbazel-out/testlogs/", TestLogsStep.Line("/ws/jbazel-out/testlogs/", ["//a:t"]));
        Assert.Equal(
            "rbs: logs of 7 tests that did not pass (//:1, //:2, //:3, //:4, //:5, and 2 more) are in /d/",
            TestLogsStep.Line("/d/", ["//:1", "//:2", "//:3", "//:4", "//:5", "//:6", "//:7"]));
    }

    [Fact]
    public void OutputsAreCollectedForBuildEvenAfterAStartupOptionWithASeparateValue() =>
        Assert.True(OutputsStep.Applies(fetchOutputs: true, ["--output_base", "/tmp/ob", "build", "//..."]));
}
