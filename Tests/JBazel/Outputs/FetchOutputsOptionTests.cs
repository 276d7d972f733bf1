using Rbs.JBazel.Commands;
using Rbs.JBazel.Configuration;
using Rbs.JBazel.Outputs;
using Rbs.JBazel.Terminal;

namespace Rbs.Tests.JBazel.Outputs;

public sealed class FetchOutputsOptionTests : IDisposable
{
    private readonly TempWorkspace _workspace = new();

    public void Dispose() => _workspace.Dispose();

    [Fact]
    public void OffByDefaultAndOnFromTheCommandLineEnvironmentOrRcFile()
    {
        Assert.False(Resolve([], []).FetchOutputs);
        Assert.True(Resolve(["--rbs_fetch_outputs"], []).FetchOutputs);
        Assert.True(Resolve(["--rbs_fetch_outputs=true"], []).FetchOutputs);
        Assert.True(Resolve([], new() { ["RBS_FETCH_OUTPUTS"] = "1" }).FetchOutputs);
        Assert.False(Resolve([], new() { ["RBS_FETCH_OUTPUTS"] = "false" }).FetchOutputs);

        File.WriteAllText(Path.Combine(_workspace.Root, ".jbazelrc"), "--rbs_fetch_outputs\n");
        Assert.True(Resolve([], []).FetchOutputs);
        // The command line beats the rc file.
        Assert.False(Resolve(["--rbs_fetch_outputs=no"], []).FetchOutputs);
    }

    [Fact]
    public void TheSwitchNeverSwallowsTheNextArgument()
    {
        var split = ArgumentSplitter.Split(["--rbs_fetch_outputs", "build", "//app:all"], BazelCommand.OptionsTakingValues);
        Assert.Equal(["--rbs_fetch_outputs"], split.RbsTokens);
        Assert.Equal(["build", "//app:all"], split.BazelArgs);
    }

    [Fact]
    public void ABadValueIsAnError()
    {
        var command = NewCommand([]);
        var parse = command.ParseTokens(["--rbs_fetch_outputs=maybe"]);
        Assert.Contains("'maybe' is not a switch value", BazelCommand.DescribeErrors(parse), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(true, new[] { "build", "//..." }, true)]
    [InlineData(true, new[] { "--output_base=/tmp/ob", "build", "//app:all" }, true)]
    [InlineData(false, new[] { "build", "//..." }, false)]
    [InlineData(true, new[] { "query", "//..." }, false)]
    [InlineData(true, new[] { "cquery", "//..." }, false)]
    [InlineData(true, new[] { "info" }, false)]
    [InlineData(true, new[] { "test", "//..." }, false)]
    [InlineData(true, new[] { "run", "//app:tool", "--", "build" }, false)]
    [InlineData(true, new string[0], false)]
    public void OnlyBuildCommandsCollectOutputs(bool enabled, string[] args, bool expected) =>
        Assert.Equal(expected, OutputsStep.Applies(enabled, args));

    [Fact]
    public void HelpDescribesTheOption()
    {
        var help = BazelCommand.HelpText();
        Assert.Contains("--rbs_fetch_outputs=true|false", help, StringComparison.Ordinal);
        Assert.Contains("env RBS_FETCH_OUTPUTS, default false", help, StringComparison.Ordinal);
        Assert.Contains("jbazel-out/", help, StringComparison.Ordinal);
    }

    private BazelCommand NewCommand(Dictionary<string, string> variables) =>
        new(new CliEnvironment(variables, _workspace.Root, _workspace.Home, "test-host"),
            new StandardStreams(Stream.Null, Stream.Null, Stream.Null));

    private RbsSettings Resolve(string[] commandLine, Dictionary<string, string> variables)
    {
        var command = NewCommand(variables);
        var parse = command.ParseTokens(commandLine);
        Assert.Empty(parse.Errors);
        return command.ResolveSettings(parse, _workspace.Root);
    }
}
