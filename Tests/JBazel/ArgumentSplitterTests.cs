using Rbs.JBazel.Commands;
using Rbs.JBazel.Configuration;

namespace Rbs.Tests.JBazel;

public sealed class ArgumentSplitterTests
{
    private static SplitArguments Split(params string[] args) => ArgumentSplitter.Split(args, BazelCommand.OptionsTakingValues);

    [Fact]
    public void RbsOptionsBeforeTheCommandAreTakenOut()
    {
        var split = Split("--rbs_orchestrator=http://o:1", "build", "//a:b");
        Assert.Equal(["--rbs_orchestrator=http://o:1"], split.RbsTokens);
        Assert.Equal(["build", "//a:b"], split.BazelArgs);
    }

    [Fact]
    public void RbsOptionsAfterTheCommandAreTakenOutToo()
    {
        var split = Split("build", "--rbs_status", "always", "//a:b", "--rbs_connect=direct");
        Assert.Equal(["--rbs_status", "always", "--rbs_connect=direct"], split.RbsTokens);
        Assert.Equal(["build", "//a:b"], split.BazelArgs);
    }

    [Fact]
    public void StartupOptionsAndCommandOptionsPassUnchangedAndInOrder()
    {
        string[] args = ["--output_base=/o", "--host_jvm_args", "-Xmx2g", "--nohome_rc", "build", "-c", "opt", "--config=x", "-k", "//..."];
        var split = Split(args);
        Assert.Empty(split.RbsTokens);
        Assert.Equal(args, split.BazelArgs);
    }

    [Fact]
    public void NothingAfterDoubleDashIsInterpreted()
    {
        var split = Split("run", "//tool", "--rbs_status=always", "--", "--rbs_connect=direct", "--rbs_bogus", "--");
        Assert.Equal(["--rbs_status=always"], split.RbsTokens);
        Assert.Equal(["run", "//tool", "--", "--rbs_connect=direct", "--rbs_bogus", "--"], split.BazelArgs);
    }

    [Fact]
    public void SeparateValueIsTakenOnlyByOptionsThatHaveOne()
    {
        // --rbs_help is a flag: "build" after it is bazel's command, not its value.
        var split = Split("--rbs_help", "build", "--rbs_timeout", "30s");
        Assert.Equal(["--rbs_help", "--rbs_timeout", "30s"], split.RbsTokens);
        Assert.Equal(["build"], split.BazelArgs);
    }

    [Fact]
    public void ValueIsNeverTakenFromDoubleDashOrPastTheEnd()
    {
        var split = Split("build", "--rbs_status", "--", "x");
        Assert.Equal(["--rbs_status"], split.RbsTokens);
        Assert.Equal(["build", "--", "x"], split.BazelArgs);

        split = Split("build", "--rbs_connect");
        Assert.Equal(["--rbs_connect"], split.RbsTokens);
    }

    [Fact]
    public void UnknownRbsOptionsAreKeptForTheParserToReject()
    {
        var split = Split("--rbs_bogus", "build");
        Assert.Equal(["--rbs_bogus"], split.RbsTokens);
        Assert.Equal(["build"], split.BazelArgs);
    }

    [Fact]
    public void SimilarButDifferentPrefixesPassToBazel()
    {
        var split = Split("build", "--rbs", "--rbsx=1", "-rbs_status=always", "--RBS_STATUS=always");
        Assert.Empty(split.RbsTokens);
        Assert.Equal(["build", "--rbs", "--rbsx=1", "-rbs_status=always", "--RBS_STATUS=always"], split.BazelArgs);
    }
}
