using Rbs.Shared.Text;

namespace Rbs.Tests.Shared.Text;

public sealed class UntrustedTextTests
{
    [Theory]
    [InlineData("", "")]
    [InlineData("/home/alice/ws", "/home/alice/ws")]
    [InlineData("a\nforged log line", "a\\nforged log line")]
    [InlineData("nul\0here", "nul\\0here")]
    [InlineData("esc\u001b[31m", "esc\\u001b[31m")]
    [InlineData("ünïcödé ✓", "ünïcödé ✓")]
    public void ShortInputIsQuotedWithControlCharactersEscaped(string input, string expected) =>
        Assert.Equal(expected, UntrustedText.Echo(input));

    [Fact]
    public void LongInputIsCutToTwoHundredCharactersAndSaysItsLength()
    {
        var input = "/" + new string('x', 1024 * 1024 - 1);

        var echoed = UntrustedText.Echo(input);

        Assert.Equal(input[..UntrustedText.MaxEchoedChars] + "… (1048576 chars)", echoed);
    }

    [Fact]
    public void ACutNeverSplitsASurrogatePair()
    {
        var input = new string('a', UntrustedText.MaxEchoedChars - 1) + "😀" + new string('b', 10);

        var echoed = UntrustedText.Echo(input);

        Assert.Equal(new string('a', UntrustedText.MaxEchoedChars - 1) + $"… ({input.Length} chars)", echoed);
    }
}
