using System.Text;
using Rbs.JBazel;
using Rbs.JBazel.Commands;
using Rbs.JBazel.Configuration;
using Rbs.JBazel.Terminal;

namespace Rbs.Tests.JBazel;

public sealed class SettingsTests : IDisposable
{
    private readonly TempWorkspace _workspace = new();
    private readonly MemoryStream _stdout = new();
    private readonly MemoryStream _stderr = new();

    public void Dispose()
    {
        _workspace.Dispose();
        _stdout.Dispose();
        _stderr.Dispose();
    }

    [Fact]
    public void DefaultsWhenNothingIsSet()
    {
        var settings = Resolve([], []);
        Assert.Equal(new Uri("http://127.0.0.1:50051"), settings.Orchestrator);
        Assert.Equal(ConnectPreference.Auto, settings.Connect);
        Assert.Equal(StatusMode.Auto, settings.Status);
        Assert.Null(settings.ApiKey);
        Assert.Equal(TimeSpan.FromSeconds(120), settings.Timeout);
    }

    [Fact]
    public void PrecedenceIsCommandLineThenEnvironmentThenWorkspaceRcThenUserRc()
    {
        WriteUserRc("--rbs_orchestrator=http://user:1 --rbs_connect=direct --rbs_status=never --rbs_api_key=user-key --rbs_timeout=1s");
        WriteWorkspaceRc("--rbs_orchestrator=http://workspace:2\n--rbs_connect=tunnel\n--rbs_status=always\n--rbs_api_key=ws-key");
        var environment = new Dictionary<string, string>
        {
            ["RBS_ORCHESTRATOR"] = "http://env:3",
            ["RBS_CONNECT"] = "auto",
            ["RBS_STATUS"] = "auto",
        };

        var settings = Resolve(["--rbs_orchestrator", "http://cli:4", "--rbs_connect=direct"], environment);

        Assert.Equal(new Uri("http://cli:4"), settings.Orchestrator); // command line beats all
        Assert.Equal(ConnectPreference.Direct, settings.Connect); // command line beats environment's "auto"
        Assert.Equal(StatusMode.Auto, settings.Status); // environment beats both rc files
        Assert.Equal("ws-key", settings.ApiKey); // workspace rc beats user rc
        Assert.Equal(TimeSpan.FromSeconds(1), settings.Timeout); // user rc beats the default
    }

    [Fact]
    public void EachLayerAloneIsHonoured()
    {
        WriteUserRc("--rbs_orchestrator=http://user:1");
        Assert.Equal(new Uri("http://user:1"), Resolve([], []).Orchestrator);

        WriteWorkspaceRc("--rbs_orchestrator=http://workspace:2");
        Assert.Equal(new Uri("http://workspace:2"), Resolve([], []).Orchestrator);

        Assert.Equal(new Uri("http://env:3"), Resolve([], new() { ["RBS_ORCHESTRATOR"] = "http://env:3" }).Orchestrator);

        Assert.Equal(new Uri("http://cli:4"), Resolve(["--rbs_orchestrator=http://cli:4"], new() { ["RBS_ORCHESTRATOR"] = "http://env:3" }).Orchestrator);
    }

    [Fact]
    public void RcFilesIgnoreCommentsAndLaterLinesWin()
    {
        WriteWorkspaceRc("# a comment --rbs_status=never\n\n   \n--rbs_status=never\n  --rbs_status always  # trailing words are not comments\n");
        var error = Assert.Throws<SettingsException>(() => Resolve([], []));
        Assert.Contains(".jbazelrc:5", error.Message, StringComparison.Ordinal);

        WriteWorkspaceRc("# a comment --rbs_status=never\n\n--rbs_status=never\n  --rbs_status always\n");
        Assert.Equal(StatusMode.Always, Resolve([], []).Status);
    }

    [Fact]
    public void EmptyEnvironmentVariablesCountAsUnset()
    {
        WriteWorkspaceRc("--rbs_api_key=from-rc");
        var settings = Resolve([], new() { ["RBS_API_KEY"] = "", ["RBS_STATUS"] = "" });
        Assert.Equal("from-rc", settings.ApiKey);
        Assert.Equal(StatusMode.Auto, settings.Status);
    }

    [Theory]
    [InlineData("RBS_CONNECT", "sideways", "'sideways' is not a connect mode")]
    [InlineData("RBS_STATUS", "loud", "'loud' is not a status mode")]
    [InlineData("RBS_TIMEOUT", "-5s", "'-5s' is not a positive duration")]
    [InlineData("RBS_ORCHESTRATOR", "127.0.0.1:50051", "is not an orchestrator address")]
    public void BadEnvironmentValuesNameTheVariable(string variable, string value, string expected)
    {
        var error = Assert.Throws<SettingsException>(() => Resolve([], new() { [variable] = value }));
        Assert.StartsWith($"environment variable {variable}: ", error.Message, StringComparison.Ordinal);
        Assert.Contains(expected, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void BazelOptionsInAnRcFileAreRejectedWithTheLine()
    {
        WriteUserRc("--rbs_status=always\nbuild --config=ci\n");
        var error = Assert.Throws<SettingsException>(() => Resolve([], []));
        Assert.Contains(Path.Combine(_workspace.Home, ".jbazelrc") + ":2: 'build' is not a jbazel option", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--rbs_timeout=90", 90_000)]
    [InlineData("--rbs_timeout=90s", 90_000)]
    [InlineData("--rbs_timeout=1500ms", 1_500)]
    [InlineData("--rbs_timeout=2m", 120_000)]
    [InlineData("--rbs_timeout=1h", 3_600_000)]
    [InlineData("--rbs_timeout=00:00:05", 5_000)]
    public void TimeoutFormats(string token, int milliseconds)
    {
        Assert.Equal(TimeSpan.FromMilliseconds(milliseconds), Resolve([token], []).Timeout);
    }

    [Fact]
    public void SeparateAndAttachedValuesMeanTheSame()
    {
        Assert.Equal(Resolve(["--rbs_connect", "tunnel", "--rbs_api_key", "k"], []), Resolve(["--rbs_connect=tunnel", "--rbs_api_key=k"], []));
    }

    [Theory]
    [InlineData("--rbs_bogus=1", "unknown option '--rbs_bogus=1'")]
    [InlineData("--rbs_connect=sideways", "'sideways' is not a connect mode; expected direct, tunnel or auto")]
    [InlineData("--rbs_status=loud", "'loud' is not a status mode; expected auto, always or never")]
    [InlineData("--rbs_timeout=0", "is not a positive duration")]
    [InlineData("--rbs_orchestrator=ftp://x", "is not an orchestrator address")]
    [InlineData("--rbs_timeout", "--rbs_timeout")]
    public async Task BadCommandLineOptionsExit2WithOneLine(string token, string expected)
    {
        var command = NewCommand([]);
        var code = await command.InvokeAsync(["build", token, "//..."], CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(ExitCodes.CommandLineError, code);
        var stderr = Encoding.UTF8.GetString(_stderr.ToArray());
        Assert.StartsWith("rbs: ", stderr, StringComparison.Ordinal);
        Assert.Contains(expected, stderr, StringComparison.Ordinal);
        Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [Fact]
    public async Task HelpDocumentsEveryOptionItsVariableAndThePrecedence()
    {
        var code = await NewCommand([]).InvokeAsync(["--rbs_help"], CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(0, code);
        var help = Encoding.UTF8.GetString(_stdout.ToArray());
        foreach (var name in new[] { "--rbs_orchestrator", "--rbs_connect", "--rbs_status", "--rbs_api_key", "--rbs_timeout", "--rbs_help", "--rbs_version" })
        {
            Assert.Contains(name, help, StringComparison.Ordinal);
        }

        foreach (var variable in new[] { "RBS_ORCHESTRATOR", "RBS_CONNECT", "RBS_STATUS", "RBS_API_KEY", "RBS_TIMEOUT" })
        {
            Assert.Contains("env " + variable, help, StringComparison.Ordinal);
        }

        Assert.Contains("command line > environment (RBS_*) > <workspace>/.jbazelrc > ~/.jbazelrc > default", help, StringComparison.Ordinal);
        Assert.Contains("default http://127.0.0.1:50051", help, StringComparison.Ordinal);
        Assert.Contains("default 120s", help, StringComparison.Ordinal);
    }

    [Fact]
    public async Task VersionPrintsOneLine()
    {
        var code = await NewCommand([]).InvokeAsync(["--rbs_version"], CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(0, code);
        Assert.Matches("^jbazel [0-9]+\\.[0-9]+\\.[0-9]+.*\n$", Encoding.UTF8.GetString(_stdout.ToArray()));
    }

    private BazelCommand NewCommand(Dictionary<string, string> variables) =>
        new(new CliEnvironment(variables, _workspace.Root, _workspace.Home, "test-host"),
            new StandardStreams(Stream.Null, _stdout, _stderr));

    private RbsSettings Resolve(string[] commandLine, Dictionary<string, string> variables)
    {
        var command = NewCommand(variables);
        var parse = command.ParseTokens(commandLine);
        Assert.Empty(parse.Errors);
        return command.ResolveSettings(parse, _workspace.Root);
    }

    private void WriteUserRc(string text) => File.WriteAllText(Path.Combine(_workspace.Home, ".jbazelrc"), text);

    private void WriteWorkspaceRc(string text) => File.WriteAllText(Path.Combine(_workspace.Root, ".jbazelrc"), text);
}
